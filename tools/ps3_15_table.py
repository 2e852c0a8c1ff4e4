"""Regenerate ``client/ps3_15_table_e1_1.csv``: PS3.15 Annex E Table E.1-1, machine-readable.

Two maintained parsings of the standard's published tables are merged, and checked
against each other where their editions overlap:

- the basic-profile action of every attribute from dicom-anonymizer's newest edition
  module (``dicomanonymizer/dicom_anonymization_databases/dicomfields_<edition>.py``,
  read as text, not imported);
- the option columns (retain device identity, modified dates, ...) from
  innolitics/dicom-standard's ``standard/confidentiality_profile_attributes.json``,
  which carries every column of the table but trails the editions.

An attribute the option source does not list (added to the table after its edition)
gets no option entries: every option then treats it as the basic profile does, which
removes at least as much as the newer table asks. The run stops when the two sources
disagree on the basic action of an attribute both list.

    pip install dicom-anonymizer==2.1.0
    curl -O https://raw.githubusercontent.com/innolitics/dicom-standard/master/standard/confidentiality_profile_attributes.json
    tables=$(python -c "import dicomanonymizer, os; print(os.path.dirname(
        dicomanonymizer.__file__))")/dicom_anonymization_databases
    python tools/ps3_15_table.py --actions $tables/dicomfields_2026c.py \\
        --actions-edition 2026c --actions-source "dicom-anonymizer 2.1.0" \\
        --options confidentiality_profile_attributes.json --options-edition 2024b \\
        --options-source "innolitics/dicom-standard 8670abd" \\
        --out client/ps3_15_table_e1_1.csv
"""

from __future__ import annotations

import argparse
import ast
import csv
import io
import json
import re
import sys
from pathlib import Path

from pydicom.datadict import keyword_for_tag

# Table E.1-1's option columns: the innolitics key of each, and spinefl's column name.
OPTION_COLUMNS = {
    "rtnSafePrivOpt": "retain_safe_private",
    "rtnUIDsOpt": "retain_uids",
    "rtnDevIdOpt": "retain_device_identity",
    "rtnInstIdOpt": "retain_institution_identity",
    "rtnPatCharsOpt": "retain_patient_characteristics",
    "rtnLongFullDatesOpt": "retain_longitudinal_full_dates",
    "rtnLongModifDatesOpt": "retain_longitudinal_modified_dates",
    "cleanDescOpt": "clean_descriptors",
    "cleanStructContOpt": "clean_structured_content",
    "cleanGraphOpt": "clean_graphics",
}
# dicom-anonymizer's list names and the table's action codes.
ACTION_LISTS = {"D_TAGS": "D", "Z_TAGS": "Z", "X_TAGS": "X", "U_TAGS": "U", "Z_D_TAGS": "Z/D",
                "X_Z_TAGS": "X/Z", "X_D_TAGS": "X/D", "X_Z_D_TAGS": "X/Z/D",
                "X_Z_U_STAR_TAGS": "X/Z/U*"}
# The table's rows that name a range rather than one tag, as spinefl writes them.
PATTERNS = {"(50XX,XXXX)": "50xx,xxxx", "(60XX,4000)": "60xx,4000", "(60XX,3000)": "60xx,3000",
            "(GGGG,EEEE) WHERE GGGG IS ODD": "gggg,eeee"}
COMMENT = re.compile(r"\(0x([0-9A-Fa-f]{4}),\s*0x([0-9A-Fa-f]{4})\),\s*#\s*(.*)$")


def read_actions(path: Path) -> dict[str, tuple[str, str]]:
    """Tag ("gggg,eeee", upper case) -> (action, name) from a dicomfields module's lists."""
    tree = ast.parse(path.read_text())
    lines = path.read_text().splitlines()
    actions: dict[str, tuple[str, str]] = {}
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.List)):
            continue
        action = ACTION_LISTS.get(node.targets[0].id)  # type: ignore[attr-defined]
        if action is None:
            continue
        for element in node.value.elts:
            values = ast.literal_eval(element)
            match = COMMENT.search(lines[element.lineno - 1])
            name = match.group(3).strip() if match else ""
            if len(values) == 2:
                actions[f"{values[0]:04X},{values[1]:04X}"] = (action, name)
    return actions


def read_options(path: Path) -> dict[str, dict]:
    """Tag ("gggg,eeee" or a PATTERNS value) -> the innolitics row."""
    rows = {}
    for row in json.loads(path.read_text()):
        tag = PATTERNS.get(row["tag"], row["tag"].strip("()"))
        rows[tag] = row
    return rows


def merge(actions: dict[str, tuple[str, str]], options: dict[str, dict]) -> list[dict[str, str]]:
    """One row per attribute; raises SystemExit naming every disagreement."""
    disagreements = [f"{tag} {options[tag]['name']}: {options[tag]['basicProfile']} against "
                     f"{action}" for tag, (action, _) in actions.items()
                     if tag in options and options[tag]["basicProfile"] != action]
    if disagreements:
        raise SystemExit("the sources disagree on the basic profile:\n" +
                         "\n".join(disagreements))
    rows = []
    for tag in sorted(set(actions) | set(options)):
        option_row = options.get(tag, {})
        basic, name = actions.get(tag, (option_row.get("basicProfile", ""), ""))
        row = {"tag": f"({tag})", "keyword": _keyword(tag), "name": option_row.get("name") or name,
               "basic": basic}
        row.update({ours: option_row.get(theirs, "") for theirs, ours in OPTION_COLUMNS.items()})
        rows.append(row)
    return rows


def _keyword(tag: str) -> str:
    if "x" in tag or "g" in tag:
        return ""
    return keyword_for_tag(int(tag.replace(",", ""), 16)) or ""


def render(rows: list[dict[str, str]], header: list[str]) -> str:
    out = io.StringIO()
    for line in header:
        out.write(f"# {line}\n")
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actions", type=Path, required=True)
    parser.add_argument("--actions-edition", required=True)
    parser.add_argument("--actions-source", required=True)
    parser.add_argument("--options", type=Path, required=True)
    parser.add_argument("--options-edition", required=True)
    parser.add_argument("--options-source", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    actions, options = read_actions(args.actions), read_options(args.options)
    rows = merge(actions, options)
    header = [
        "DICOM PS3.15 Annex E, Table E.1-1 (Application Level Confidentiality Profile "
        "Attributes), generated by tools/ps3_15_table.py: do not edit by hand.",
        f"basic: edition {args.actions_edition} ({args.actions_source}); option columns: "
        f"edition {args.options_edition} ({args.options_source}).",
        f"edition={args.actions_edition} options_edition={args.options_edition} "
        f"rows={len(rows)}",
    ]
    args.out.write_text(render(rows, header))
    print(f"{args.out}: {len(rows)} rows ({len(actions)} with basic actions from "
          f"{args.actions_edition}, {len(options)} with option columns from "
          f"{args.options_edition})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
