"""One credential detector: the config refuses what redaction would mask, and says where."""

from __future__ import annotations

import json

import pytest

from schemas.config import ConfigError, parse_config, redacted
from tests.schemas.secret_cases import (
    ALLOWED_INPUTS,
    ALLOWED_STORAGE_OPTIONS,
    CANARY,
    CASES,
    get_path,
    unvalidated,
)

BASE = {"dataset": "canary", "output": "/nonexistent/out", "pool": {"input": "/nonexistent/in"}}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_credential_anywhere_is_refused_naming_its_path_never_its_value(case):
    with pytest.raises(ConfigError) as err:
        parse_config(case.config(BASE))
    message = str(err.value)
    assert "\n" not in message
    assert f"'{case.path}'" in message
    assert "credential" in message and "environment" in message
    assert CANARY not in message
    assert err.value.__cause__ is None and err.value.__suppress_context__


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_redaction_masks_whatever_validation_refuses(case):
    data = redacted(unvalidated(case.config(BASE)))
    assert get_path(data, case.path) == "***"
    assert CANARY not in json.dumps(data)


@pytest.mark.parametrize("case", CASES[:3], ids=[c.id for c in CASES[:3]])
def test_a_credential_set_after_validation_is_refused_too(case):
    cfg = parse_config(BASE)
    with pytest.raises(Exception, match="looks like a credential") as err:
        cfg.storage_options = {case.at[-1]: CANARY}
    assert CANARY not in str(err.value)
    assert cfg.storage_options == {}


def test_assigning_a_url_with_a_password_to_a_section_is_refused():
    cfg = parse_config(BASE)
    with pytest.raises(Exception, match="credential") as err:
        cfg.model.pretrained = f"https://u:{CANARY}@host/ckpt.pt"
    assert CANARY not in str(err.value)


def test_override_with_a_credential_is_refused(tmp_path):
    from schemas.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(BASE))
    with pytest.raises(ConfigError, match=r"'storage_options\.client_secret'") as err:
        load_config(path, [f"storage_options.client_secret={CANARY}"])
    assert CANARY not in str(err.value)


def test_option_names_that_only_contain_the_letters_still_work():
    data = {
        **BASE,
        "storage_options": ALLOWED_STORAGE_OPTIONS,
        "pool": {"input": ALLOWED_INPUTS},
        "model": {"pretrained": "laion2b_s34b_b79k"},
        "cache": "s3://bucket/cache",
    }
    cfg = parse_config(data)
    assert cfg.storage_options == ALLOWED_STORAGE_OPTIONS
    # nothing to hide: the manifest (and the config hash built from it) is the config itself
    assert redacted(cfg) == cfg.model_dump(mode="json")


@pytest.mark.parametrize("url", ALLOWED_INPUTS)
def test_urls_without_a_password_are_fine(url):
    assert parse_config({**BASE, "pool": {"input": url}}).pool.input == url


def test_other_errors_still_read_as_before():
    with pytest.raises(ConfigError, match=r"^config: unknown key 'pool\.inptu'"):
        parse_config({"pool": {"input": "/x", "inptu": "/x"}})
    with pytest.raises(ConfigError, match=r"'secret' looks like a credential"):
        parse_config({"storage_options": {"secret": CANARY}})
