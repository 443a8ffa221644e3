"""Validates tagger.io custom resources against the CRDs' openAPIV3Schema.

usage: check_crs.py CRDS.yaml FILE.yaml...

Each tagger.io document of each FILE is checked against the schema of its
kind and version in CRDS, as the API server would with strict field
validation (kubectl's default): unknown fields are errors, not silently
pruned. Documents of other groups are left to kubernetes-validate.
Prints one line per checked document, "ok KIND NAME" or
"error KIND NAME: PATH: MESSAGE"; exits 1 if any failed or none was checked.
"""
import copy
import sys

import jsonschema
import yaml


def strict(schema):
    """The API server's structural schema as plain JSON Schema: `nullable`
    becomes a null type, objects with `properties` take no others unless
    they preserve unknown fields."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if not isinstance(node, dict):
            return
        if node.pop("nullable", False) and "type" in node:
            node["type"] = [node["type"], "null"]
        if (
            "properties" in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
            and "additionalProperties" not in node
        ):
            node["additionalProperties"] = False
        for value in node.get("properties", {}).values():
            walk(value)
        if isinstance(node.get("items"), dict):
            walk(node["items"])
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"])

    walk(schema)
    return schema


def schemas(crds_path):
    found = {}
    with open(crds_path) as f:
        for crd in yaml.safe_load_all(f):
            if not crd:
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                schema = strict(version["schema"]["openAPIV3Schema"])
                # What every object has; the API server checks these itself.
                schema["properties"]["apiVersion"] = {"const": f"{spec['group']}/{version['name']}"}
                schema["properties"]["kind"] = {"const": spec["names"]["kind"]}
                schema["properties"]["metadata"] = {
                    "type": "object",
                    "required": ["name"],
                    "properties": {"name": {"type": "string"}},
                }
                schema["required"] = sorted(set(schema.get("required", [])) | {"metadata"})
                found[(f"{spec['group']}/{version['name']}", spec["names"]["kind"])] = schema
    return found


def main(argv):
    known = schemas(argv[1])
    checked = failed = 0
    for path in argv[2:]:
        with open(path) as f:
            documents = list(yaml.safe_load_all(f))
        for doc in documents:
            if not doc or not str(doc.get("apiVersion", "")).startswith("tagger.io/"):
                continue
            kind = doc.get("kind")
            name = (doc.get("metadata") or {}).get("name")
            schema = known.get((doc["apiVersion"], kind))
            checked += 1
            if schema is None:
                failed += 1
                print(f"error {kind} {name}: no CRD for {doc['apiVersion']} {kind}")
                continue
            errors = sorted(
                jsonschema.Draft7Validator(schema).iter_errors(doc),
                key=lambda e: list(e.absolute_path),
            )
            if errors:
                failed += 1
                for e in errors:
                    where = ".".join(str(p) for p in e.absolute_path) or "(root)"
                    print(f"error {kind} {name}: {where}: {e.message}")
            else:
                print(f"ok {kind} {name}")
    if checked == 0:
        print("error: no tagger.io document found")
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
