"""Checks infra/ without the Bicep compiler (it cannot be installed offline): every .bicep file
parses (pycep-parser), every module reference resolves, each module call passes only
parameters the module declares and every parameter it requires, and every file a template
loads exists. checkov runs after this (scripts/infra-check.sh)."""

import re
import sys
from pathlib import Path

from pycep import BicepParser

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"


def main() -> int:
    errors = []
    parsed = {}
    for path in sorted(INFRA.rglob("*.bicep")):
        try:
            parsed[path] = BicepParser().parse(file_path=path)
        except Exception as e:  # the parser's own exception types vary
            errors.append(f"{path.relative_to(ROOT)}: does not parse: {type(e).__name__}: {str(e)[:400]}")
    for path, doc in parsed.items():
        rel = path.relative_to(ROOT)
        text = path.read_text()
        for fn, target in re.findall(r"\b(loadTextContent|loadJsonContent)\('([^']+)'\)", text):
            if not (path.parent / target).is_file():
                errors.append(f"{rel}: {fn}('{target}') names no file")
        for name, module in (doc.get("modules") or {}).items():
            detail = module.get("detail") or {}
            target = path.parent / detail.get("path", "")
            if target not in parsed:
                errors.append(f"{rel}: module {name}: '{detail.get('path')}' is not a parsed .bicep file")
                continue
            declared = parsed[target].get("parameters") or {}
            config = module.get("config") or {}
            # A looped or conditional module keeps its body one level down.
            if "params" not in config and isinstance(config.get("config"), dict):
                config = config["config"]
            given = config.get("params") or {}
            for p in given:
                if p not in declared:
                    errors.append(f"{rel}: module {name} passes '{p}', which {target.name} does not declare")
            for p, decl in declared.items():
                if decl.get("default") is None and p not in given:
                    errors.append(f"{rel}: module {name} does not pass '{p}', which {target.name} requires")
        modules = {n: path.parent / (m.get("detail") or {}).get("path", "") for n, m in (doc.get("modules") or {}).items()}
        for name, output in re.findall(r"\b(\w+)(?:\[\w+\])?\.outputs\.(\w+)", text):
            target = modules.get(name)
            if target is None:
                errors.append(f"{rel}: '{name}.outputs.{output}': {name} is not a module of this file")
            elif target in parsed and output not in (parsed[target].get("outputs") or {}):
                errors.append(f"{rel}: '{name}.outputs.{output}': {target.name} has no output '{output}'")
        print(f"parsed {rel}: {len(doc.get('parameters') or {})} parameters, "
              f"{len(doc.get('resources') or {})} resources, {len(doc.get('modules') or {})} modules")
    for e in errors:
        print("ERROR", e, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
