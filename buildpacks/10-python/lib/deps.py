"""Dependency files the Python buildpack reads with the stack's python3 (no pipenv, no
third-party packages).

  deps.py pipfile-lock LOCK OUT   writes the `default` section of Pipfile.lock as a pip
                                  requirements file (pins, markers, extras, hashes, index)
  deps.py pyproject PYPROJECT     exit 0 when pyproject.toml describes an installable
                                  project ([project], [build-system] or [tool.poetry]),
                                  1 when it only configures tools, 2 when it is not TOML
"""

import json
import sys

PYPI_HOSTS = ("https://pypi.org/simple", "https://pypi.python.org/simple")


def requirement_line(name, spec):
    if isinstance(spec, str):
        return name + ("" if spec.strip() in ("", "*") else spec.strip())
    if not isinstance(spec, dict):
        raise ValueError(f"{name}: unexpected entry {spec!r}")
    extras = spec.get("extras") or []
    base = name + (f"[{','.join(extras)}]" if extras else "")
    if "git" in spec:
        ref = spec.get("ref") or spec.get("branch") or spec.get("tag")
        url = spec["git"]
        if not url.startswith("git+"):
            url = "git+" + url
        line = f"{base} @ {url}" + (f"@{ref}" if ref else "")
    elif "file" in spec:
        line = f"{base} @ {spec['file']}"
    elif "path" in spec:
        line = spec["path"]
    else:
        version = (spec.get("version") or "").strip()
        line = base + ("" if version in ("", "*") else version)
    markers = spec.get("markers")
    if markers:
        line += f" ; {markers}"
    return line


def pipfile_lock(lock_path, out_path):
    try:
        with open(lock_path, encoding="utf-8") as f:
            lock = json.load(f)
    except json.JSONDecodeError as e:
        print(f"Pipfile.lock: {e}")
        return 2
    if not isinstance(lock, dict):
        print("Pipfile.lock: the top level is not a JSON object")
        return 2
    default = lock.get("default") or {}
    lines = []
    sources = (lock.get("_meta") or {}).get("sources") or []
    urls = [s.get("url", "").rstrip("/") for s in sources if isinstance(s, dict)]
    if urls and urls[0] and urls[0] not in PYPI_HOSTS:
        lines.append(f"--index-url {urls[0]}")
    for url in urls[1:]:
        if url:
            lines.append(f"--extra-index-url {url}")
    entries = []
    try:
        for name in sorted(default):
            spec = default[name]
            hashes = spec.get("hashes") if isinstance(spec, dict) else None
            entries.append((requirement_line(name, spec), hashes or []))
    except ValueError as e:
        print(f"Pipfile.lock: {e}")
        return 2
    # pip checks hashes only when every requirement has them (a complete lock does).
    with_hashes = bool(entries) and all(hashes for _, hashes in entries)
    for line, hashes in entries:
        if with_hashes:
            line += "".join(f" --hash={h}" for h in hashes)
        lines.append(line)
    with open(out_path, "w", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))
    print(f"{len(entries)} packages from Pipfile.lock"
          + (" (hash-checked)" if with_hashes else ""))
    return 0


def pyproject(path):
    import tomllib

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        print(f"pyproject.toml: {e}")
        return 2
    tool = data.get("tool") or {}
    if "project" in data or "build-system" in data or "poetry" in tool:
        return 0
    return 1


def main(argv):
    if len(argv) == 4 and argv[1] == "pipfile-lock":
        return pipfile_lock(argv[2], argv[3])
    if len(argv) == 3 and argv[1] == "pyproject":
        return pyproject(argv[2])
    print(__doc__)
    return 64


if __name__ == "__main__":
    sys.exit(main(sys.argv))
