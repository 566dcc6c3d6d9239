"""The one self-contained display page: inline CSS and JS, no external fonts, scripts or CDN.

The page listens to `/events` (Server-Sent Events). Each event is a rendered state; the page
shows Chinese above English in large high-contrast text, coloured by tone, with a local countdown
for `blink` and `locked_out`. EventSource reconnects by itself; the page also reconnects when the
stream goes quiet (a heartbeat every few seconds) and, after a few seconds without the server,
replaces a stale result with "please wait" so an old "door unlocked" never stays on screen.
"""

from __future__ import annotations

import json

_PAGE = """<!DOCTYPE html>
<html lang="zh-CN">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>facegate</title>
<style>
html, body { margin: 0; height: 100%; overflow: hidden; cursor: none; user-select: none; }
body {
  display: flex; flex-direction: column; align-items: center; justify-content: center;
  text-align: center; background: #000; color: #fff;
  font-family: "Noto Sans CJK SC", "Source Han Sans SC", "WenQuanYi Zen Hei",
    "Droid Sans Fallback", "DejaVu Sans", sans-serif;
}
main { width: 92vw; }
#icon { font-size: clamp(40px, 10vw, 11vh); font-weight: 800; line-height: 1; margin-bottom: 2vh; }
#zh { font-size: clamp(32px, 7.5vw, 12vh); font-weight: 700; line-height: 1.2; }
#en { font-size: clamp(26px, 5vw, 8vh); font-weight: 600; line-height: 1.2; margin-top: 1.5vh; }
#count { font-size: clamp(56px, 16vw, 19vh); font-weight: 800; line-height: 1.1;
  margin-top: 2vh; font-variant-numeric: tabular-nums; }
.hint { font-size: clamp(20px, 3.2vw, 5vh); line-height: 1.3; }
#zh_hint { margin-top: 4vh; }
[hidden] { display: none !important; }
body.tone-neutral { background: #000; color: #fff; }
body.tone-active { background: #0a2a5e; color: #fff; }
body.tone-ok { background: #0b6b2b; color: #fff; }
body.tone-bad { background: #a4001d; color: #fff; }
body.tone-warn { background: #ffc400; color: #000; }
#conn { position: fixed; right: 1.5vw; bottom: 1.5vh; width: 14px; height: 14px;
  border-radius: 50%; background: #d00; border: 2px solid #fff; }
#preview { position: fixed; left: 2vw; top: 50%; transform: translateY(-50%); width: 26vw;
  border: 3px solid #fff; }
html.with-preview main { margin-left: 28vw; width: 68vw; }
</style>
</head>
<body class="tone-neutral" data-state="">
<main>
  <div id="icon" aria-hidden="true" hidden></div>
  <div id="zh" lang="zh-CN">请稍候</div>
  <div id="en" lang="en">Please wait</div>
  <div id="count" hidden></div>
  <div id="zh_hint" class="hint" lang="zh-CN"></div>
  <div id="en_hint" class="hint" lang="en"></div>
</main>
<div id="conn" title="reconnecting" hidden></div>
<img id="preview" alt="" hidden>
<script>
(function () {
  "use strict";
  var CONFIG = __CONFIG__;
  var $ = function (id) { return document.getElementById(id); };
  var status = { seq: 0, state: "", connects: 0, shown_ms: {} };
  window.__facegate = status;
  // A shape as well as a colour, for readers who cannot tell red from green.
  var ICONS = { ok: "\u2713", bad: "\u2715", warn: "!" };
  var source = null, quiet = null, stale = null, tick = null, pending = null;

  function put(s) {
    $("zh").textContent = s.zh; $("en").textContent = s.en;
    $("zh_hint").textContent = s.zh_hint || ""; $("en_hint").textContent = s.en_hint || "";
    document.body.className = "tone-" + (s.tone || "neutral");
    $("icon").textContent = ICONS[s.tone] || ""; $("icon").hidden = !ICONS[s.tone];
    document.body.setAttribute("data-state", s.state || "");
  }

  function countdown(s) {
    clearInterval(tick); tick = null;
    var box = $("count"), left = s.detail && s.detail.seconds_left;
    if ((s.state !== "blink" && s.state !== "locked_out") || typeof left !== "number") {
      box.hidden = true; return;
    }
    // Server and page share the board's clock: the countdown runs from the state's start t,
    // so a reconnect mid-countdown shows the time really left.
    var elapsed = Math.min(Math.max(Date.now() / 1000 - s.t, 0), left);
    var end = performance.now() + (left - elapsed) * 1000;
    var draw = function () {
      var rest = Math.max(0, Math.ceil((end - performance.now()) / 1000));
      box.textContent = rest >= 60 ? Math.floor(rest / 60) + ":" + ("0" + rest % 60).slice(-2)
                                   : String(rest);
      if (rest === 0 && tick !== null) { clearInterval(tick); tick = null; }
    };
    box.hidden = false; draw(); tick = setInterval(draw, 200);
  }

  function show(event) {
    var s = JSON.parse(event.data);
    put(s); countdown(s);
    status.seq = s.seq; status.state = s.state;
    requestAnimationFrame(function () {
      status.shown_ms[s.seq] = performance.timeOrigin + performance.now();
      var keys = Object.keys(status.shown_ms);
      if (keys.length > 256) { delete status.shown_ms[keys[0]]; }
    });
  }

  function alive() {
    clearTimeout(quiet); clearTimeout(stale); stale = null;
    $("conn").hidden = true;
    quiet = setTimeout(reconnect, CONFIG.heartbeat_ms * 3);
  }

  function lost() {
    $("conn").hidden = false;
    if (stale === null) {
      stale = setTimeout(function () {
        clearInterval(tick); $("count").hidden = true;
        put({ zh: "请稍候", en: "Please wait", zh_hint: "正在连接…", en_hint: "Connecting…",
              tone: "neutral", state: "" });
      }, CONFIG.stale_ms);
    }
  }

  function reconnect() {
    clearTimeout(quiet);
    if (source !== null) { source.close(); source = null; }
    lost();
    if (pending === null) {
      pending = setTimeout(function () { pending = null; connect(); }, CONFIG.retry_ms);
    }
  }

  function connect() {
    if (source !== null) { source.close(); }
    source = new EventSource("/events");
    source.onopen = function () { status.connects += 1; alive(); };
    source.onmessage = function (event) { alive(); show(event); };
    source.addEventListener("ping", alive);
    source.onerror = function () {
      lost();
      // EventSource retries by itself unless the server answered with an error: then it
      // stays CLOSED, and the page starts a new one.
      if (source !== null && source.readyState === EventSource.CLOSED) { reconnect(); }
    };
  }

  function preview() {
    var img = $("preview"), n = 0;
    img.hidden = false; document.documentElement.className = "with-preview";
    var next = function (ms) {
      setTimeout(function () { img.src = "/preview.jpg?n=" + (n++); }, ms);
    };
    img.onload = function () { next(CONFIG.preview_ms); };
    img.onerror = function () { next(1000); };
    next(0);
  }

  connect();
  if (CONFIG.preview) { preview(); }
})();
</script>
</body>
</html>
"""


def page_html(*, retry_ms: int, heartbeat_ms: int, preview: bool) -> str:
    """The display page with its settings filled in (UTF-8 HTML)."""
    config = {
        "retry_ms": retry_ms,
        "heartbeat_ms": heartbeat_ms,
        "stale_ms": max(3000, 2 * retry_ms),
        "preview": preview,
        "preview_ms": 150,
    }
    return _PAGE.replace("__CONFIG__", json.dumps(config))
