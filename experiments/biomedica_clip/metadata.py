"""BIOMEDICA's per-sample metadata (each sample's `json`): the archive's field names, and reading the two
this experiment needs, the article and the zero-shot label.

The field names, as the archive writes them: minwoosun/biomedica-etl at commit
b53ded3ca6679e969da54f4abba106018dfe7fc3, scripts/06_serilaize_to_webdataset_parallel.py,
`generate_webdataset` ("3) Populate data point"); `save_example_to_tar` writes every field but `jpg`,
`txt` and `__key__` into the sample's json:

    image_file_name, image_cluster_id (the figure's image id), image_hash, image_label_id (its cluster,
    "0".."1999"), image_panel_type, image_panel_subtype,
    image_primary_label, image_secondary_label: lists of strings, the cluster's `global_class` and
        `local_class` (annotations/cluster_labels.json: one entry for 1,824 of the 2,000 clusters,
        several for multi-panel figures, e.g. ["Microscopy", "Plots and Charts", "Immuno Assays"]),
    image_size ([width, height]), image_set, image_context,
    article_accession_id (the PMC id, "PMC..."), article_title, article_journal, article_date,
    article_abstract, article_mesh_terms, article_keywords, article_reference_ids,
    article_reference_count, article_reference_list, article_subject, article_citation,
    article_license, article_text.
    `__key__` is the figure's file name, `<batch>-<PMC id>-<position>-<image id>` (the ETL splits it on
    "-" to find the article; the image id may hold dashes itself).
"""

import json

from medrepro.errors import DataError

FIELDS = ("image_file_name", "image_cluster_id", "image_hash", "image_label_id", "image_panel_type",
          "image_panel_subtype", "image_primary_label", "image_secondary_label", "image_size", "image_set",
          "image_context", "article_accession_id", "article_title", "article_journal", "article_date",
          "article_abstract", "article_mesh_terms", "article_keywords", "article_reference_ids",
          "article_reference_count", "article_reference_list", "article_subject", "article_citation",
          "article_license", "article_text")
ARTICLE = "article_accession_id"
# Names an earlier synthetic layout of ours used instead of the archive's: refused, never read, so that
# shards in that layout cannot pass for BIOMEDICA's.
OLD_NAMES = {"pmcid": ARTICLE, "primary_label": "image_primary_label", "secondary_label": "image_secondary_label"}


def parse(sample: dict[str, bytes]) -> dict:
    """The sample's json. Errors name no place: the caller prefixes the shard and the key."""
    if "json" not in sample:
        raise DataError("no json metadata; every BIOMEDICA sample has one (article, labels)")
    try:
        meta = json.loads(sample["json"])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"its json does not parse ({e})") from None
    if not isinstance(meta, dict):
        raise DataError(f"its json is a {type(meta).__name__}, not an object")
    return meta


def field(meta: dict, name: str) -> object:
    """`meta[name]`; refuses an old name standing in for it, and an absent field."""
    if name in meta:
        return meta[name]
    old = next((o for o, new in OLD_NAMES.items() if new == name and o in meta), None)
    if old:
        raise DataError(f"its json has `{old}` but no `{name}`, the field the BIOMEDICA archive writes: "
                        "rewrite the shards in the archive's layout (experiments/biomedica_clip/metadata.py)")
    raise DataError(f"its json has no `{name}`")


def article(meta: dict) -> str:
    """The PMC id: the bootstrap unit, and what the held-out check compares."""
    value = field(meta, ARTICLE)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"its `{ARTICLE}` is {value!r}, not a PMC id; the article is never guessed from the key")
    return value.strip()


def single_label(meta: dict, name: str) -> str:
    """The sample's zero-shot class from field `name`: a string field as is; a list of strings only when
    it holds exactly one entry. "" for none: a multi-panel figure's labels name its panels in no ranked
    order, so no single class is its truth."""
    value = field(meta, name)
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value[0].strip() if len(value) == 1 else ""
    raise DataError(f"its `{name}` is {value!r}, not a string or a list of strings")


def article_and_label(sample: dict[str, bytes], label_field: str) -> tuple[str, str]:
    """The sample's PMC id and its zero-shot class ("" for none) from its json."""
    meta = parse(sample)
    return article(meta), single_label(meta, label_field)
