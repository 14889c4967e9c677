"""Benchmark caption language identification (`tasks.pool.language.identify`).

Captions are the real LAION-400M and CC3M alt-texts from ../shared (generated ones, the
hand-written labelled set below repeated, when those are absent). Reports captions/s and
ms/caption for one `identify` call over all captions (1x and 4x the input, for scaling), the
latency of a one-caption call, the model's load time, and accuracy on the labelled set: 25
caption-like sentences in each of 11 languages, written by hand as translations of the same 25
scenes (so no language gets easier content), plus 5 short (1-3 word) ones per language. The
time per caption is to be compared with the pool flow's time per sample (a CLIP forward).

    .venv/bin/python bench/bench_language.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import cores, emit, load_1m, peak_rss_bytes, scaling  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "captions"
LAION = DATA / "laion400m_10k.parquet"
CC3M = DATA / "cc3m_val_15k.tsv"

# 25 scenes per language, " | "-separated (no caption contains "|").
_SENTENCES = {
    "en": """a dog running on the beach at sunset | Red leather handbag with gold buckle |
    two children playing football in the park | View of the mountains from our hotel room |
    wedding cake decorated with fresh flowers | Vintage wooden chair, restored and painted white |
    the old lighthouse on a foggy morning | Men's running shoes, size 10, blue and grey |
    close-up of a bee collecting pollen | Modern kitchen with marble countertops and an island |
    people walking across a busy city street | Homemade pizza with basil and mozzarella |
    a cat sleeping on a stack of books | Aerial photo of the harbour at night |
    Watercolor painting of a small village by the river | The band performing live on stage |
    fresh vegetables at the farmers market | Woman reading a newspaper in a cafe |
    snow covered pine trees in the forest | Printable birthday card for kids |
    an old man fishing from a wooden boat | Luxury villa with a private swimming pool |
    students listening to a lecture in a large hall | Hand-knitted wool scarf in dark green |
    the bride and groom dancing at the reception""",
    "de": """Ein Hund läuft bei Sonnenuntergang am Strand |
    Rote Ledertasche mit goldener Schnalle | Zwei Kinder spielen Fußball im Park |
    Blick auf die Berge von unserem Hotelzimmer aus |
    Hochzeitstorte mit frischen Blumen dekoriert |
    Alter Holzstuhl, restauriert und weiß gestrichen |
    Der alte Leuchtturm an einem nebligen Morgen | Herren Laufschuhe in Blau und Grau |
    Nahaufnahme einer Biene, die Pollen sammelt | Moderne Küche mit Arbeitsplatten aus Marmor |
    Menschen gehen über eine belebte Straße in der Stadt |
    Hausgemachte Pizza mit Basilikum und Mozzarella | Eine Katze schläft auf einem Stapel Bücher |
    Luftaufnahme des Hafens bei Nacht | Aquarell eines kleinen Dorfes am Fluss |
    Die Band spielt live auf der Bühne | Frisches Gemüse auf dem Wochenmarkt |
    Frau liest eine Zeitung im Café | Schneebedeckte Kiefern im Wald |
    Geburtstagskarte für Kinder zum Ausdrucken | Ein alter Mann angelt von einem Holzboot aus |
    Luxusvilla mit privatem Schwimmbad | Studenten hören eine Vorlesung in einem großen Saal |
    Handgestrickter Wollschal in Dunkelgrün | Das Brautpaar tanzt bei der Hochzeitsfeier""",
    "fr": """Un chien qui court sur la plage au coucher du soleil |
    Sac à main en cuir rouge avec boucle dorée | Deux enfants jouent au football dans le parc |
    Vue sur les montagnes depuis notre chambre d'hôtel |
    Gâteau de mariage décoré de fleurs fraîches |
    Vieille chaise en bois, restaurée et peinte en blanc | Le vieux phare par un matin brumeux |
    Chaussures de course pour homme, bleu et gris |
    Gros plan d'une abeille qui récolte du pollen |
    Cuisine moderne avec plans de travail en marbre |
    Des gens traversent une rue animée de la ville | Pizza maison au basilic et à la mozzarella |
    Un chat qui dort sur une pile de livres | Photo aérienne du port la nuit |
    Aquarelle d'un petit village au bord de la rivière | Le groupe joue en concert sur scène |
    Légumes frais au marché du samedi | Une femme lit le journal dans un café |
    Sapins couverts de neige dans la forêt | Carte d'anniversaire à imprimer pour les enfants |
    Un vieil homme pêche depuis une barque en bois | Villa de luxe avec piscine privée |
    Des étudiants écoutent un cours dans un grand amphithéâtre |
    Écharpe en laine tricotée à la main, vert foncé | Les mariés dansent pendant la réception""",
    "es": """Un perro corriendo en la playa al atardecer |
    Bolso de cuero rojo con hebilla dorada | Dos niños jugando al fútbol en el parque |
    Vista de las montañas desde nuestra habitación del hotel |
    Pastel de bodas decorado con flores frescas |
    Silla de madera antigua, restaurada y pintada de blanco |
    El viejo faro en una mañana de niebla | Zapatillas de correr para hombre, azul y gris |
    Primer plano de una abeja recogiendo polen | Cocina moderna con encimeras de mármol |
    Gente caminando por una calle concurrida de la ciudad |
    Pizza casera con albahaca y mozzarella | Un gato durmiendo sobre una pila de libros |
    Foto aérea del puerto por la noche | Acuarela de un pequeño pueblo junto al río |
    La banda tocando en directo en el escenario | Verduras frescas en el mercado del pueblo |
    Mujer leyendo el periódico en una cafetería | Pinos cubiertos de nieve en el bosque |
    Tarjeta de cumpleaños para imprimir para niños | Un anciano pescando desde un bote de madera |
    Villa de lujo con piscina privada | Estudiantes escuchando una clase en un aula grande |
    Bufanda de lana tejida a mano en verde oscuro |
    Los novios bailando en la fiesta de la boda""",
    "it": """Un cane che corre sulla spiaggia al tramonto |
    Borsa in pelle rossa con fibbia dorata | Due bambini giocano a calcio nel parco |
    Vista sulle montagne dalla nostra camera d'albergo |
    Torta nuziale decorata con fiori freschi |
    Vecchia sedia di legno, restaurata e dipinta di bianco |
    Il vecchio faro in una mattina di nebbia | Scarpe da corsa da uomo, blu e grigie |
    Primo piano di un'ape che raccoglie il polline | Cucina moderna con piani di lavoro in marmo |
    Persone che camminano in una strada affollata della città |
    Pizza fatta in casa con basilico e mozzarella | Un gatto che dorme su una pila di libri |
    Foto aerea del porto di notte | Acquerello di un piccolo paese sul fiume |
    La band suona dal vivo sul palco | Verdure fresche al mercato del sabato |
    Una donna legge il giornale al bar | Pini coperti di neve nel bosco |
    Biglietto di auguri di compleanno da stampare per bambini |
    Un vecchio pescatore su una barca di legno | Villa di lusso con piscina privata |
    Studenti che ascoltano una lezione in un'aula grande |
    Sciarpa di lana fatta a mano verde scuro | Gli sposi ballano durante il ricevimento""",
    "pt": """Um cachorro correndo na praia ao pôr do sol |
    Bolsa de couro vermelha com fivela dourada | Duas crianças jogando futebol no parque |
    Vista das montanhas a partir do nosso quarto de hotel |
    Bolo de casamento decorado com flores frescas |
    Cadeira de madeira antiga, restaurada e pintada de branco |
    O velho farol numa manhã de nevoeiro | Tênis de corrida masculino, azul e cinza |
    Close de uma abelha coletando pólen | Cozinha moderna com bancadas de mármore |
    Pessoas andando por uma rua movimentada da cidade | Pizza caseira com manjericão e muçarela |
    Um gato dormindo em cima de uma pilha de livros | Foto aérea do porto à noite |
    Aquarela de uma pequena aldeia à beira do rio | A banda tocando ao vivo no palco |
    Legumes frescos na feira livre | Mulher lendo o jornal em uma cafeteria |
    Pinheiros cobertos de neve na floresta | Cartão de aniversário para imprimir para crianças |
    Um homem idoso pescando de um barco de madeira | Casa de luxo com piscina privativa |
    Estudantes assistindo a uma aula em um auditório grande |
    Cachecol de lã tricotado à mão em verde escuro | Os noivos dançando na festa de casamento""",
    "nl": """Een hond rent bij zonsondergang over het strand |
    Rode leren handtas met gouden gesp | Twee kinderen spelen voetbal in het park |
    Uitzicht op de bergen vanuit onze hotelkamer | Bruidstaart versierd met verse bloemen |
    Oude houten stoel, gerestaureerd en wit geverfd | De oude vuurtoren op een mistige ochtend |
    Hardloopschoenen voor heren, blauw en grijs | Close-up van een bij die stuifmeel verzamelt |
    Moderne keuken met marmeren aanrechtbladen | Mensen lopen door een drukke straat in de stad |
    Zelfgemaakte pizza met basilicum en mozzarella | Een kat slaapt op een stapel boeken |
    Luchtfoto van de haven bij nacht | Aquarel van een klein dorp aan de rivier |
    De band speelt live op het podium | Verse groenten op de zaterdagmarkt |
    Vrouw leest de krant in een café | Besneeuwde dennenbomen in het bos |
    Verjaardagskaart voor kinderen om uit te printen |
    Een oude man vist vanuit een houten bootje | Luxe villa met een eigen zwembad |
    Studenten luisteren naar een college in een grote zaal |
    Handgebreide wollen sjaal in donkergroen | Het bruidspaar danst op het feest""",
    "ru": """Собака бежит по пляжу на закате | Красная кожаная сумка с золотой пряжкой |
    Двое детей играют в футбол в парке | Вид на горы из нашего номера в отеле |
    Свадебный торт, украшенный живыми цветами |
    Старый деревянный стул, отреставрированный и покрашенный в белый цвет |
    Старый маяк туманным утром | Мужские кроссовки для бега, синие с серым |
    Пчела собирает пыльцу крупным планом | Современная кухня с мраморными столешницами |
    Люди идут по оживлённой городской улице | Домашняя пицца с базиликом и моцареллой |
    Кошка спит на стопке книг | Вид на ночной порт с высоты |
    Акварель с маленькой деревней у реки | Группа выступает вживую на сцене |
    Свежие овощи на рынке | Женщина читает газету в кафе | Заснеженные сосны в лесу |
    Открытка на день рождения для детей | Старик ловит рыбу с деревянной лодки |
    Роскошная вилла с собственным бассейном | Студенты слушают лекцию в большой аудитории |
    Вязаный шерстяной шарф тёмно-зелёного цвета | Жених и невеста танцуют на свадьбе""",
    "zh": """夕阳下在海滩上奔跑的狗 | 带金色扣子的红色皮革手提包 | 两个孩子在公园里踢足球 |
    从酒店房间看到的山景 | 用鲜花装饰的结婚蛋糕 | 翻新并漆成白色的旧木椅 |
    雾蒙蒙的早晨里的老灯塔 | 男士跑步鞋，蓝色和灰色 | 蜜蜂采集花粉的特写 |
    带大理石台面的现代厨房 | 人们走在繁忙的城市街道上 | 自制罗勒马苏里拉披萨 |
    一只猫睡在一摞书上 | 夜晚港口的航拍照片 | 河边小村庄的水彩画 | 乐队在舞台上现场演出 |
    农贸市场上的新鲜蔬菜 | 在咖啡馆看报纸的女人 | 森林里白雪覆盖的松树 | 可打印的儿童生日贺卡 |
    一位老人在木船上钓鱼 | 带私人游泳池的豪华别墅 | 学生们在大教室里听讲座 |
    手工编织的深绿色羊毛围巾 | 新郎新娘在婚宴上跳舞""",
    "ja": """夕暮れの海辺を走る犬 | 金色のバックルが付いた赤い革のハンドバッグ |
    公園でサッカーをする二人の子ども | ホテルの部屋から見た山の景色 |
    生花で飾られたウェディングケーキ | 白く塗り直した古い木の椅子 | 霧の朝の古い灯台 |
    メンズのランニングシューズ、青とグレー | 花粉を集めるミツバチのクローズアップ |
    大理石のカウンターがあるモダンなキッチン | にぎやかな街の通りを歩く人々 |
    バジルとモッツァレラの手作りピザ | 本の山の上で眠る猫 | 夜の港の空撮写真 |
    川沿いの小さな村の水彩画 | ステージでライブ演奏するバンド | 朝市に並ぶ新鮮な野菜 |
    カフェで新聞を読む女性 | 森の中の雪に覆われた松の木 | 子ども向けの印刷できる誕生日カード |
    木のボートから釣りをするおじいさん | プライベートプール付きの高級ヴィラ |
    大きな教室で講義を聞く学生たち | 手編みの深緑色のウールのマフラー | 披露宴で踊る新郎新婦""",
    "ar": """كلب يركض على الشاطئ عند غروب الشمس | حقيبة يد جلدية حمراء بإبزيم ذهبي |
    طفلان يلعبان كرة القدم في الحديقة | منظر الجبال من غرفتنا في الفندق |
    كعكة زفاف مزينة بالزهور الطازجة | كرسي خشبي قديم تم ترميمه وطلاؤه باللون الأبيض |
    المنارة القديمة في صباح ضبابي | حذاء جري رجالي باللون الأزرق والرمادي |
    صورة مقربة لنحلة تجمع حبوب اللقاح | مطبخ حديث بأسطح من الرخام |
    أشخاص يسيرون في شارع مزدحم في المدينة | بيتزا منزلية بالريحان والموزاريلا |
    قطة نائمة على كومة من الكتب | صورة جوية للميناء في الليل |
    لوحة مائية لقرية صغيرة بجانب النهر | الفرقة تعزف مباشرة على المسرح | خضروات طازجة في السوق |
    امرأة تقرأ الجريدة في مقهى | أشجار صنوبر مغطاة بالثلج في الغابة |
    بطاقة عيد ميلاد للأطفال قابلة للطباعة | رجل عجوز يصطاد السمك من قارب خشبي |
    فيلا فاخرة مع مسبح خاص | طلاب يستمعون إلى محاضرة في قاعة كبيرة |
    وشاح من الصوف محبوك يدويا باللون الأخضر الداكن | العروسان يرقصان في حفل الزفاف""",
}
# 1-3 words, the hard case: "red dress", "wedding photos", "summer garden", "mountain lake",
# "my dog"
_SHORT = {
    "en": "red dress | wedding photos | summer garden | mountain lake | my dog",
    "de": "rotes Kleid | Hochzeitsfotos | Sommergarten im Juli | Bergsee | mein Hund",
    "fr": "robe rouge | photos de mariage | jardin d'été | lac de montagne | mon chien",
    "es": "vestido rojo | fotos de boda | jardín de verano | lago de montaña | mi perro",
    "it": "vestito rosso | foto di matrimonio | giardino d'estate | lago di montagna | il mio cane",
    "pt": (
        "vestido vermelho | fotos do casamento | jardim de verão | lago na montanha | meu cachorro"
    ),
    "nl": "rode jurk | trouwfoto's | zomertuin | bergmeer | mijn hond",
    "ru": "красное платье | свадебные фото | летний сад | горное озеро | моя собака",
    "zh": "红色连衣裙 | 婚纱照 | 夏日花园 | 高山湖泊 | 我的狗",
    "ja": "赤いドレス | 結婚式の写真 | 夏の庭 | 山の湖 | うちの犬",
    "ar": "فستان أحمر | صور الزفاف | حديقة صيفية | بحيرة جبلية | كلبي",
}


def _split(block: str) -> list[str]:
    return [" ".join(s.split()) for s in block.split("|")]


LABELLED: dict[str, list[str]] = {k: _split(v) for k, v in _SENTENCES.items()}
SHORT: dict[str, list[str]] = {k: _split(v) for k, v in _SHORT.items()}


def shared_captions() -> dict[str, list[str]] | None:
    """LAION and CC3M captions from ../shared, or None when they are absent."""
    if not (LAION.exists() and CC3M.exists()):
        return None
    laion = pl.read_parquet(LAION)["TEXT"].to_list()
    with open(CC3M, encoding="utf-8") as f:
        cc3m = [line.split("\t", 1)[0] for line in f if line.strip()]
    return {"laion": laion, "cc3m": cc3m}


def accuracy(truth: dict[str, list[str]]) -> dict[str, float]:
    """Share of each language's sentences identified as that language, and overall."""
    from tasks.pool.language import identify

    flat = [(lang, s) for lang, sents in truth.items() for s in sents]
    got = identify(pl.Series([s for _, s in flat]))["lang"].to_list()
    out: dict[str, float] = {}
    for lang in truth:
        hits = [g == want for (want, _), g in zip(flat, got, strict=True) if want == lang]
        out[lang] = round(sum(hits) / len(hits), 3)
    out["all"] = round(sum(g == w for (w, _), g in zip(flat, got, strict=True)) / len(flat), 3)
    return out


def timed(captions: pl.Series) -> float:
    from tasks.pool.language import identify

    t0 = time.perf_counter()
    identify(captions)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="2,000 captions instead of all")
    args = ap.parse_args()

    from tasks.pool.language import identify, load_model

    t0 = time.perf_counter()
    load_model()
    load_s = time.perf_counter() - t0

    corpora = shared_captions()
    source = "LAION-400M 10k + CC3M val 15.8k (../shared)"
    if corpora is None:
        corpora = {"generated": [s for v in LABELLED.values() for s in v] * 100}
        source = "generated: the labelled set repeated (../shared absent)"
    captions = pl.Series([c for v in corpora.values() for c in v], dtype=pl.String)
    if args.quick:
        captions = captions.head(2000)
    n = len(captions)

    timed(captions.head(100))  # warm
    t1x = min(timed(captions) for _ in range(3))
    t4x = timed(pl.concat([captions] * 4))
    single = [timed(captions.slice(i, 1)) for i in range(min(n, 300))]

    result = {
        "bench": "language",
        "workload": f"language ID of {n} captions ({source}), one identify() call",
        "throughput": round(n / t1x, 1),
        "unit": "captions per second",
        "bound": None,
        "bound_throughput": None,
        "ratio": None,
        "target_ratio": None,
        "ms_per_caption": round(1000 * t1x / n, 4),
        "single_call_ms_median": round(1000 * statistics.median(single), 4),
        "model_load_s": round(load_s, 3),
        "accuracy_labelled": accuracy(LABELLED),
        "accuracy_short": accuracy(SHORT),
        "scaling": scaling(t1x, t4x),
        "peak_rss_bytes": peak_rss_bytes(),
        "cores": cores(),
        "load_1m": load_1m(),
    }
    for name, caps in corpora.items():
        langs = identify(pl.Series(caps, dtype=pl.String))["lang"]
        result[f"{name}_english_rate"] = round(float((langs == "en").mean() or 0.0), 4)
    emit(result)


if __name__ == "__main__":
    main()
