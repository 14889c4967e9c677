"""Canary credentials for the secret tests: where each one goes and the path it must be named by.

Shared by tests/schemas/test_secrets.py (validation, redaction) and tests/flows/test_secrets.py
(nothing reaches the Prefect server). Every canary holds CANARY, which must never show up in
an error message, a manifest or anything the Prefect API stores.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from schemas.config import CurateConfig, ModelConfig, PoolConfig

CANARY = "CANARY-7f3a9c2e-d0not1eak"
CONN = (
    f"DefaultEndpointsProtocol=https;AccountName=a;AccountKey={CANARY};"
    "EndpointSuffix=core.windows.net"
)
PEM = f"-----BEGIN RSA PRIVATE KEY-----\n{CANARY}\n-----END RSA PRIVATE KEY-----\n"


@dataclass(frozen=True)
class Case:
    id: str
    at: tuple[str, ...]  # where the value goes in the config
    value: Any
    path: str  # the dotted path the error message must name

    def config(self, base: dict[str, Any]) -> dict[str, Any]:
        data = copy.deepcopy(base)
        node = data
        for part in self.at[:-1]:
            node = node.setdefault(part, {})
        node[self.at[-1]] = copy.deepcopy(self.value)
        return data


def _so(*keys: str, value: Any = CANARY) -> Case:
    path = ".".join(("storage_options", *keys))
    return Case(keys[-1], ("storage_options", *keys), value, path)


CASES = [
    _so("client_secret"),
    _so("api_key"),
    _so("s3_additional_kwargs", "SSECustomerKey"),
    _so("SSECustomerKey"),
    _so("clientSecret"),
    _so("password"),
    _so("passwd"),
    _so("token"),
    _so("key"),
    _so("secret"),
    _so("account_key"),
    _so("accountKey"),
    _so("sas_token"),
    _so("sasToken"),
    _so("session_token"),
    _so("access_key"),
    _so("private_key"),
    _so("aws_secret_access_key"),
    _so("customer_key"),
    _so("apikey"),
    _so("connection_string", value=CONN),
    _so("client_kwargs", "credentials", value={"client_id": "app", "client_secret": CANARY}),
    _so("client_kwargs", "headers", "Authorization", value=f"Bearer {CANARY}"),
    _so("client_kwargs", "headers", "x-api-key"),
    _so("auth", value=["user", CANARY]),
    _so("tls_client_cert", value=PEM),  # a harmless name, but the value is a private key
    Case(
        "pool-input-url",
        ("pool", "input"),
        f"https://reader:{CANARY}@data.example.com/pool/{{date}}/*.tar",
        "pool.input",
    ),
    Case(
        "pool-input-list",
        ("pool", "input"),
        ["/data/a/{date}/*.tar", f"s3://reader:{CANARY}@bucket/b/{{date}}/*.tar"],
        "pool.input[1]",
    ),
    Case(
        "model-pretrained-url",
        ("model", "pretrained"),
        f"https://user:{CANARY}@models.example.com/ckpt.pt",
        "model.pretrained",
    ),
    Case(
        "output-sas",
        ("output",),
        f"https://acct.blob.core.windows.net/out?sv=2022-11-02&sp=rw&sig={CANARY}",
        "output",
    ),
    Case("cache-conn", ("cache",), f"Server=db;Database=c;User Id=u;Password={CANARY};", "cache"),
    Case("pool-input-conn", ("pool", "input"), CONN, "pool.input"),
]

# Option names that merely contain the letters of a credential word, and values that look
# like URLs without a password: all of these must keep working (and stay unredacted).
ALLOWED_STORAGE_OPTIONS: dict[str, Any] = {
    "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000", "region_name": "eu-west-1"},
    "config_kwargs": {"signature_version": "s3v4", "s3": {"addressing_style": "path"}},
    "s3_additional_kwargs": {
        "ServerSideEncryption": "aws:kms",
        "SSEKMSKeyId": "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef",
        "SSECustomerAlgorithm": "AES256",
    },
    "requester_pays": True,
    "use_ssl": False,
    "anon": False,
    "default_fill_cache": False,
    "cache_regions": True,
    "profile": "curation",
    "account_name": "curationstore",
    "version_aware": True,
    "key": None,  # empty credentials are no credentials (e.g. a YAML template left blank)
    "secret": "",
}
ALLOWED_INPUTS = [
    "abfs://container@account.dfs.core.windows.net/pool/{date}/*.tar",
    "https://data.example.com:8443/pool/{date}/00000.tar",
    "s3://bucket/weird:name/{date}/*.tar",
    "/data/pool/{date}/*.parquet",
]


def unvalidated(data: dict[str, Any]) -> CurateConfig:
    """A CurateConfig built without validation: what redaction and serve must still catch."""
    fields: dict[str, Any] = {k: data[k] for k in ("dataset", "output", "cache") if k in data}
    fields["storage_options"] = data.get("storage_options", {})
    fields["model"] = ModelConfig.model_construct(**data.get("model", {}))
    if "pool" in data:
        fields["pool"] = PoolConfig.model_construct(**data["pool"])
    return CurateConfig.model_construct(**fields)


def get_path(data: Any, path: str) -> Any:
    """The value at a reported path such as `pool.input[1]` or `storage_options.key`."""
    head, _, index = path.partition("[")
    node = data
    for part in head.split("."):
        node = node[part]
    return node[int(index.rstrip("]"))] if index else node
