#!/usr/bin/env python3
"""Writes the seed inputs of hsda's fuzz targets (fuzz/seeds/TARGET/) from the official HSDS examples in
../shared/hsds/examples, in the input layouts the targets read (see their module docs)."""
import io
import json
import pathlib
import re
import zipfile

ROOT = pathlib.Path(__file__).resolve().parent
EXAMPLES = ROOT.parent.parent / "shared" / "hsds" / "examples"
CATALOG = (ROOT.parent / "src" / "hsds" / "catalog_data.rs").read_text()
PLURALS = re.findall(r'plural: "([a-z_]+)"', CATALOG)
CSV_FILES = re.findall(r'csv_file: "([a-z_.]+)"', CATALOG)
DESCRIPTOR_PICK = len(CSV_FILES)  # the first name after the tables' files


def write(target, name, data):
    folder = ROOT / "seeds" / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)


def package_files():
    files = []
    for path in sorted((EXAMPLES / "csv").iterdir()):
        if path.name == "datapackage.json":
            files.append((DESCRIPTOR_PICK, path.read_bytes()))
        elif path.name in CSV_FILES:
            files.append((CSV_FILES.index(path.name), path.read_bytes()))
    return files


def chunks(files):
    return b"\xff".join(bytes([pick]) + data for pick, data in files)


def main():
    files = package_files()
    write("import_package", "folder-example", b"\x01" + chunks(files))
    write("import_package", "built-zip-example", b"\x02" + chunks(files))
    write("import_package", "folder-services-only", b"\x01" + chunks([f for f in files if f[0] in (CSV_FILES.index("services.csv"), CSV_FILES.index("organizations.csv"))]))
    raw = io.BytesIO()
    with zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted((EXAMPLES / "csv").iterdir()):
            archive.write(path, f"export/{path.name}")
    write("import_package", "raw-zip-example", b"\x00" + raw.getvalue())
    documents = [json.loads((EXAMPLES / name).read_text()) for name in ("organization_full.json", "service_full.json", "location.json")]
    write("import_package", "ndjson-examples", b"\x03" + "\n".join(json.dumps(d) for d in documents).encode())
    write("import_package", "json-examples", b"\x04" + json.dumps(documents).encode())

    for name in ("service_full.json", "organization_full.json", "location.json", "service_at_location_full.json", "taxonomy.json", "taxonomy_term.json"):
        document = json.loads((EXAMPLES / name).read_text())
        document.pop("id", None)
        table = {"service_full.json": "services", "organization_full.json": "organizations", "location.json": "locations",
                 "service_at_location_full.json": "service_at_locations", "taxonomy.json": "taxonomies",
                 "taxonomy_term.json": "taxonomy_terms"}[name]
        write("write_json", name.removesuffix(".json"), bytes([PLURALS.index(table)]) + json.dumps(document).encode())
    write("write_json", "organization-small", bytes([PLURALS.index("organizations")]) + b'{"name": "Food Bank", "description": "Groceries"}')
    write("write_json", "phone-bad-number", bytes([PLURALS.index("phones")]) + b'{"number": 5}')


if __name__ == "__main__":
    main()
