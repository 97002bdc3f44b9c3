#!/usr/bin/env python3
"""Regenerate the compatibility table of docs/AGENTS.md from a real run.

Runs the agent presets' end-to-end tests (crates/brig-cli/tests/agents_e2e.rs,
as root, like .ci/run; they build each preset's image from its recipe in
recipes/ into target/tmp/brig-agent-images), reads each agent's version from
the image built from the recipe its preset pins (run in that image's root) (the recipe's digest is
computed here as brig computes it), and rewrites the rows between the
`compat:begin` and `compat:end` markers: agent, version and recipe, wire
format, preset, result (the test and whether it passed on this run, with the
date). Usage, from the repository
root:

    sudo python3 crates/brig-cli/tests/agents_compat.py [--no-run RESULTS]

`--no-run FILE` reads nextest's output from FILE instead of running it.
"""

import datetime
import hashlib
import json
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "AGENTS.md"
IMAGES = ROOT / "target" / "tmp" / "brig-agent-images" / "data" / "images"

# (agent, package, binary, wire format, preset, test, what the test does)
AGENTS = [
    ("Claude Code", "`@anthropic-ai/claude-code`, npm", ["opt/brig/claude-code/node_modules/.bin/claude"],
     "Anthropic Messages, streamed", "claude-code",
     "claude_code_does_a_scripted_task_and_pushes_to_a_bot_branch",
     "Bash, Read, Edit tools; commit and push to its bot branch"),
    ("Codex CLI", "`@openai/codex`, npm", ["opt/brig/codex/node_modules/.bin/codex"],
     "OpenAI Responses, streamed", "codex",
     "codex_does_a_scripted_task_and_pushes_to_a_bot_branch",
     "`exec_command` tool (the edit is a shell edit); commit and push to its bot branch"),
    ("aider", "`aider-chat`, PyPI, in a venv: it pins its own `openai`",
     ["opt/brig/aider/bin/python", "-m", "aider"], "OpenAI Chat Completions, streamed", "aider",
     "aider_does_a_scripted_task_and_its_commit_is_pushed_to_a_bot_branch",
     "a SEARCH/REPLACE edit (`-- --edit-format diff`), its own commit, the tests "
     "through `--test-cmd 'sh test.sh' --auto-test`; it runs no model-suggested "
     "command, so the preset pushes its commit to its bot branch (`push_after`)"),
]


def recipe_digest(preset):
    """brig_server::image_build::recipe_digest of recipes/PRESET/."""
    d = ROOT / "recipes" / preset
    m = "brig-recipe v1\n"
    for f in sorted(p.name for p in d.iterdir() if p.is_file()):
        m += f"file {json.dumps(f)} sha256:{hashlib.sha256((d / f).read_bytes()).hexdigest()}\n"
    return "sha256:" + hashlib.sha256(m.encode()).hexdigest()


def image_root(preset):
    """The root of the image built from the pinned recipe, and its digest."""
    try:
        index = json.loads((IMAGES / "index.json").read_text())
    except (OSError, ValueError):
        return None, None
    e = index.get("images", {}).get(f"recipe/{preset}@{recipe_digest(preset)}")
    if not e:
        return None, None
    return IMAGES / "store" / e["digest"].removeprefix("sha256:") / "rootfs", e["digest"]


def version(preset, argv):
    """The agent's --version, run in its image's root (chroot: the image's
    own runtime and libraries, not the host's)."""
    root, _ = image_root(preset)
    if root is None:
        return None
    try:
        # A private mount namespace with /proc, /dev and a /tmp in the
        # root, as a session has them (Bun wants /proc/self/exe and /dev);
        # nothing is mounted on the host.
        script = ('mount -t proc proc "$0/proc" && mount --bind /dev "$0/dev" && '
                  'mount -t tmpfs tmpfs "$0/tmp" && exec chroot "$0" "$@"')
        out = subprocess.run(["unshare", "--mount", "--propagation", "private", "--",
                              "sh", "-c", script, str(root), "/" + argv[0], *argv[1:],
                              "--version"],
                             capture_output=True, text=True, timeout=60,
                             env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/tmp",
                                  "LANG": "C.UTF-8"}).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"\d+\.\d+\.\d+", out)
    return m.group(0) if m else None


def results(text):
    """test name -> PASS/FAIL/SKIP from nextest's status lines."""
    r = {}
    for line in text.splitlines():
        m = re.match(r"\s*(PASS|FAIL|SIGSEGV|SIGABRT|TIMEOUT)\s+\[.*?\]\s+(?:\(\s*\S+\)\s+)?"
                     r"brig-cli::agents_e2e\s+(\S+)", line)
        if m:
            r[m.group(2)] = "PASS" if m.group(1) == "PASS" else "FAIL"
    return r


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--no-run":
        text = pathlib.Path(sys.argv[2]).read_text()
    else:
        p = subprocess.run(
            ["cargo", "nextest", "run", "--workspace", "--no-fail-fast",
             "--status-level", "all", "--final-status-level", "none",
             "-E", "binary(agents_e2e)"],
            cwd=ROOT, capture_output=True, text=True)
        text = p.stdout + p.stderr
    res = results(text)
    day = datetime.date.today().isoformat()
    rows = ["| Agent | Version | Wire format | Preset | Result |", "|---|---|---|---|---|"]
    for name, pkg, argv, wire, preset, test, what in AGENTS:
        v = version(preset, argv)
        recipe = f"recipe `{recipe_digest(preset)[:19]}`"
        ver = f"{v} ({pkg}; {recipe})" if v else f"not built ({pkg}; {recipe})"
        status = res.get(test)
        if status == "PASS":
            result = f"**tested: passes** ({day}, `{test}`): {what}"
        elif status == "FAIL":
            result = f"**tested: FAILS** ({day}, `{test}`)"
        else:
            result = f"not run ({day}): `{test}` did not report"
        rows.append(f"| {name} | {ver} | {wire} | {preset} | {result} |")
    rows.append("| other agents | | | not yet | |")
    doc = DOC.read_text()
    begin, end = "<!-- compat:begin -->", "<!-- compat:end -->"
    if begin not in doc or end not in doc:
        sys.exit(f"{DOC}: no {begin} ... {end} markers")
    head, rest = doc.split(begin, 1)
    _, tail = rest.split(end, 1)
    DOC.write_text(head + begin + "\n" + "\n".join(rows) + "\n" + end + tail)
    print("\n".join(rows))
    return 0 if all(res.get(a[5]) == "PASS" for a in AGENTS) else 1


if __name__ == "__main__":
    sys.exit(main())
