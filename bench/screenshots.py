"""Screenshots of what a reviewer sees in the MLflow UI after `make demo` (issue 12), taken in a real browser.

    apt-get install chromium      # once
    .venv/bin/python bench/screenshots.py --home .past --out docs/screenshots

Starts `past ui` over the home's store on a free port, finds the model's latest gated version, its adaptation
run and the run it was compared with (the champion's, when there was one), and saves with headless Chromium:
the version page (`version.png`: aliases, tags, gate verdict, the MLmodel's chat schema), the run's model
metrics (`run-curves.png`: the SFT loss curves), the run comparison of candidate and champion (`compare.png`), and the skill refresh's run
(`refresh.png`: nested rounds). Re-run it after any demo; the pictures are whatever the store holds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


# Types into MLflow's "Search metric charts" box (a React-controlled input: set through the native setter, then
# an input event), so the run page shows the charts a reviewer looks for instead of the first 76 alphabetically.
_SEARCH_JS = """(() => {{ const el = document.querySelector('input[placeholder="Search metric charts"]');
  if (!el) return false;
  Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, 'value').set.call(el, {text});
  el.dispatchEvent(new Event('input', {{bubbles: true}})); return true; }})()"""


def shoot(browser: str, url: str, out: Path, wait_ms: int, search: str = "") -> None:
    """Screenshot after `wait_ms` of *real* time, through the DevTools protocol.

    Chromium's `--screenshot` with `--virtual-time-budget` captured MLflow 3.17's chart grid as spinners
    whatever the budget: virtual time runs the page's timers, but the charts wait on real network and
    rendering. So the page is opened in a headless Chromium with a DevTools port, left alone for `wait_ms`
    of wall time, then captured (`Page.captureScreenshot`) - what a person sees after that long."""
    import asyncio
    import base64

    import websockets

    from past.serving import free_port

    port = free_port()
    proc = subprocess.Popen([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                             f"--remote-debugging-port={port}", "--window-size=1600,1000", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    async def capture() -> bytes:
        deadline = time.monotonic() + 60
        while True:  # the DevTools endpoint comes up a moment after the process
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/json/new?{urllib.parse.quote(url, safe='')}",
                                             method="PUT")
                target = json.load(urllib.request.urlopen(req, timeout=2))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
        async with websockets.connect(target["webSocketDebuggerUrl"], max_size=64 << 20) as ws:
            await asyncio.sleep(wait_ms / 1000)
            if search:
                await call(ws, 1, "Runtime.evaluate", {"expression": _SEARCH_JS.format(text=json.dumps(search))})
                await asyncio.sleep(min(wait_ms, 8000) / 1000)
            shot = await call(ws, 2, "Page.captureScreenshot", {"format": "png"})
            return base64.b64decode(shot["data"])

    async def call(ws, n: int, method: str, params: dict) -> dict:
        await ws.send(json.dumps({"id": n, "method": method, "params": params}))
        while True:
            msg = json.loads(await ws.recv())
            if msg.get("id") == n:
                return msg["result"]

    try:
        out.write_bytes(asyncio.run(capture()))
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    print(f"{out}  <-  {url}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, default=Path(".past"))
    ap.add_argument("--model", default="support-bot")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    ap.add_argument("--wait-ms", type=int, default=15000, help="real time each page gets to load before the capture")
    a = ap.parse_args()
    browser = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if browser is None:
        raise SystemExit("no chromium on PATH (apt-get install chromium)")
    os.environ["PAST_HOME"] = str(a.home.resolve())
    from mlflow import MlflowClient

    from past.config import load_settings
    from past.serving import free_port

    s = load_settings()
    client = MlflowClient(tracking_uri=s.mlflow_uri, registry_uri=s.mlflow_uri)
    versions = sorted(client.search_model_versions(f"name='{a.model}'"), key=lambda v: int(v.version))
    gated = [v for v in versions if v.tags.get("gate") in ("passed", "failed")] or versions
    refresh = client.get_experiment_by_name("past-refresh")
    parents = [r for r in client.search_runs([refresh.experiment_id], "tags.`mlflow.parentRunId` IS NULL")] \
        if refresh else []
    if not gated and not parents:
        raise SystemExit(f"no versions of {a.model!r} and no skill refresh in {s.mlflow_uri}: run `make demo` first")
    mv = gated[-1] if gated else None
    champion, runs = (mv.tags.get("compared_with", "") if mv else ""), []
    other = next((v for v in versions if str(v.version) == champion.rsplit("/", 1)[-1] and v.run_id), None)  # faced

    port = free_port()
    env = {**os.environ, "PAST_HOME": str(a.home.resolve())}
    ui = subprocess.Popen([str(Path(sys.executable).parent / "past"), "ui", "--port", str(port)], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if urllib.request.urlopen(f"{base}/health", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        a.out.mkdir(parents=True, exist_ok=True)
        if mv is not None:
            exp = client.get_run(mv.run_id).info.experiment_id
            shoot(browser, f"{base}/#/models/{a.model}/versions/{mv.version}", a.out / "version.png", a.wait_ms)
            shoot(browser, f"{base}/#/experiments/{exp}/runs/{mv.run_id}/model-metrics", a.out / "run-curves.png",
                  a.wait_ms, search="_loss")
            runs = [mv.run_id] + ([other.run_id] if other else [])
            q = urllib.parse.urlencode({"runs": json.dumps(runs), "experiments": json.dumps([exp])})
            shoot(browser, f"{base}/#/compare-runs?{q}", a.out / "compare.png", a.wait_ms)
        if parents:
            p = parents[0]
            shoot(browser, f"{base}/#/experiments/{refresh.experiment_id}/runs/{p.info.run_id}", a.out / "refresh.png",
                  a.wait_ms)
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)
    print(json.dumps({"version": mv and str(mv.version), "gate": mv and mv.tags.get("gate"), "compared_with": champion or None,
                      "runs": runs, "refresh_runs": len(parents)}))


if __name__ == "__main__":
    main()
