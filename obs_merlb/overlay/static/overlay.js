/* obs-merlb overlay: renders the engine's `state` events (see docs/ARCHITECTURE.md).
 *
 * The badge shows the emotion, or with `head=user` / `head=behaviour` that
 * head's label from the event's `heads` (a personalized model's own classes),
 * falling back to the emotion while the model has no such head.
 *
 * Connects to ws://<same host>/ws and reconnects on its own with backoff, so
 * a browser source never needs a manual refresh when the worker restarts.
 * Tests read window.__merlb.
 */
(function () {
  "use strict";

  // The palette of obs_merlb/palette.py (panel, report, native overlay), spelled
  // out because the page draws before any worker answers and previews with
  // none; tests/test_palette.py holds the two equal.
  const EMOTIONS = {
    angry:     { emoji: "😠", color: "#ff4d6d", v: -0.65, a: 0.7 },
    disgust:   { emoji: "🤢", color: "#5dd39e", v: -0.6, a: 0.15 },
    fear:      { emoji: "😨", color: "#b794f4", v: -0.55, a: 0.6 },
    happy:     { emoji: "😄", color: "#ffc93c", v: 0.75, a: 0.45 },
    neutral:   { emoji: "😐", color: "#a0aec0", v: 0.0, a: -0.1 },
    sad:       { emoji: "😢", color: "#5b9cff", v: -0.6, a: -0.5 },
    surprise:  { emoji: "😲", color: "#ff9f43", v: 0.25, a: 0.8 },
  };
  // The paper's gameplay behaviours (a model with a trained `behaviour` head).
  const BEHAVIOURS = {
    routing:     { emoji: "🧭", color: "#22d3ee" },
    procurement: { emoji: "🛒", color: "#5dd39e" },
    respawning:  { emoji: "🔁", color: "#a0aec0" },
    exploring:   { emoji: "🔭", color: "#5b9cff" },
    fighting:    { emoji: "🤺", color: "#ff4d6d" },
    punching:    { emoji: "👊", color: "#ff9f43" },
    defending:   { emoji: "🛡️", color: "#b794f4" },
    defeated:    { emoji: "💀", color: "#718096" },
  };
  // A streamer's own classes have no emoji (a guessed one could say what they
  // did not mean): they get their initial, in a colour picked by name so each
  // class keeps its colour from stream to stream.
  const CLASS_COLORS = ["#f472b6", "#34d399", "#60a5fa", "#fbbf24", "#c084fc", "#fb923c", "#22d3ee", "#a3e635"];
  const MAX_POINTS = 600;   // timeline samples kept, whatever the event rate
  const TRAIL_POINTS = 14;  // meter trail length

  const $ = (id) => document.getElementById(id);
  const stage = $("stage");
  const widget = $("widget");

  const state = {
    settings: null,
    last: null,          // last event of any type
    lastState: null,     // last `state` event
    shown: null,         // label on screen (the last sure one)
    head: "emotion",     // head that label came from (the setting, or emotion as fallback)
    visible: false,
    connected: false,
    received: 0,
    reconnects: 0,
    lastStateAt: 0,      // performance.now() of the last state
    lastGoodAt: 0,       // ... of the last state with a face and a sure label
    history: [],         // [{t, v, a, c}] for the timeline
    trail: [],           // [[x, y]] in 0..100 plane units
  };
  window.__merlb = state;

  /* ---------------------------------------------------------------- colours */

  function hexToRgb(hex) {
    const n = parseInt(hex.slice(1), 16);
    return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
  }
  function rgba(hex, alpha) {
    const [r, g, b] = hexToRgb(hex);
    return `rgba(${r}, ${g}, ${b}, ${alpha})`;
  }
  function lighten(hex, amount) {
    const c = hexToRgb(hex).map((x) => Math.round(x + (255 - x) * amount));
    return `rgb(${c[0]}, ${c[1]}, ${c[2]})`;
  }
  function setEmotionColor(hex) {
    const s = widget.style;
    s.setProperty("--emo", hex);
    s.setProperty("--emo-soft", rgba(hex, 0.28));
    s.setProperty("--emo-faint", rgba(hex, 0.22));
    s.setProperty("--emo-glow", rgba(hex, 0.55));
    s.setProperty("--emo-light", lighten(hex, 0.35));
  }

  /* ---------------------------------------------------------------- settings */

  function applySettings(settings) {
    state.settings = settings;
    const root = document.documentElement.style;
    root.setProperty("--accent", settings.accent);
    root.setProperty("--accent2", settings.accent2);
    root.setProperty("--text", settings.text_color);
    root.setProperty("--panel", rgba(settings.panel_color, settings.panel_opacity));
    root.setProperty("--font", settings.font);
    root.setProperty("--scale", String(settings.scale));
    root.setProperty("--margin", `${settings.margin}px`);
    stage.className = [
      `pos-${settings.position}`,
      `theme-${settings.theme}`,
      `metric-${settings.timeline_metric === "confidence" ? "confidence" : "va"}`,
      settings.show_confidence ? "" : "no-conf",
      settings.show_emoji ? "" : "no-emoji",
      settings.animate ? "" : "no-anim",
    ].filter(Boolean).join(" ");
    $("legend-1").textContent = settings.timeline_metric === "confidence" ? "confidence" : "valence";
    // A changed `head` (settings preview) shows the new head's label at once.
    const ev = state.lastState;
    if (ev && isSure(ev)) paintLabel(view(ev).label, false);
    else if (state.shown) paintLabel(state.shown, false);
    renderTimeline();
    evaluateVisibility();
  }

  /* ---------------------------------------------------------------- events */

  function num(x, fallback) {
    return typeof x === "number" && Number.isFinite(x) ? x : fallback;
  }
  function clamp(x, lo, hi) { return Math.min(hi, Math.max(lo, x)); }

  /* valence/arousal in [-1, 1]: the engine's scores, else from the 3-way probs. */
  function scores(ev) {
    let v = num(ev.valence_score, NaN);
    let a = num(ev.arousal_score, NaN);
    if (Number.isNaN(v) && ev.valence) v = num(ev.valence.positive, 0) - num(ev.valence.negative, 0);
    if (Number.isNaN(a) && ev.arousal) a = num(ev.arousal.high, 0) - num(ev.arousal.low, 0);
    return [clamp(num(v, 0), -1, 1), clamp(num(a, 0), -1, 1)];
  }

  /* {head, label, confidence} the badge shows for a state event: the chosen
   * head's from `heads`, else the emotion (a model without that head, or an
   * older worker without the field). */
  function view(ev) {
    const head = state.settings ? state.settings.head : "emotion";
    if (head && head !== "emotion" && ev.heads && typeof ev.heads === "object") {
      const h = ev.heads[head];
      if (h && typeof h === "object" && typeof h.label === "string") {
        return { head, label: h.label, confidence: h.confidence };
      }
    }
    return { head: "emotion", label: ev.label, confidence: ev.confidence };
  }

  function isSure(ev) {
    const label = view(ev).label;
    return ev.visible !== false && ev.face_present !== false &&
      typeof label === "string" && label !== "uncertain" && label !== "";
  }

  /* Emoji and colour of a label of any head; {initial: true} when it has no emoji. */
  function iconFor(label) {
    const known = EMOTIONS[label] || BEHAVIOURS[label];
    if (known) return { emoji: known.emoji, color: known.color, initial: false };
    let hash = 0;
    for (const ch of label) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
    const first = Array.from(label)[0] || "?";
    return { emoji: first.toUpperCase(), color: CLASS_COLORS[hash % CLASS_COLORS.length], initial: true };
  }

  function handleEvent(ev) {
    if (!ev || typeof ev !== "object") return;
    state.last = ev;
    state.received += 1;
    if (ev.type !== "state") return;  // the overlay only draws state; others are for the panel
    const now = performance.now();
    state.lastState = ev;
    state.lastStateAt = now;
    const [v, a] = scores(ev);
    const shown = view(ev);
    state.head = shown.head;
    const conf = clamp(num(shown.confidence, 0), 0, 1);
    if (isSure(ev)) {
      state.lastGoodAt = now;
      paintLabel(shown.label, true);
      $("conf-fill").style.width = `${Math.round(conf * 100)}%`;
      $("conf-pct").textContent = `${Math.round(conf * 100)}%`;
    }
    if (ev.face_present !== false) {
      moveDot(v, a);
      state.history.push({ t: now, v, a, c: conf });
      if (state.history.length > MAX_POINTS) state.history.splice(0, state.history.length - MAX_POINTS);
      renderTimeline();
    }
    evaluateVisibility();
  }

  function paintLabel(label, animate) {
    const changed = label !== state.shown;
    const info = iconFor(label);
    state.shown = label;
    $("emoji").textContent = info.emoji;
    $("emoji").classList.toggle("initial", info.initial);
    $("label").textContent = label;
    setEmotionColor(state.settings && !state.settings.emotion_colors ? state.settings.accent : info.color);
    if (changed && animate && state.settings && state.settings.animate) {
      restartAnimation($("emoji"), "pop");
      restartAnimation($("label"), "swap");
    }
  }

  function restartAnimation(el, cls) {
    el.classList.remove(cls);
    void el.offsetWidth;  // force a reflow so the same animation runs again
    el.classList.add(cls);
  }

  /* ---------------------------------------------------------------- meter */

  function moveDot(v, a) {
    const x = 50 + v * 44;  // leave a margin so the dot never touches the edge
    const y = 50 - a * 44;
    const dot = $("dot");
    dot.style.setProperty("--x", `${x.toFixed(2)}%`);
    dot.style.setProperty("--y", `${y.toFixed(2)}%`);
    const last = state.trail[state.trail.length - 1];
    if (!last || Math.hypot(last[0] - x, last[1] - y) > 0.6) {
      state.trail.push([x, y]);
      if (state.trail.length > TRAIL_POINTS) state.trail.shift();
      $("trail").setAttribute("points", state.trail.map((p) => `${p[0].toFixed(1)},${p[1].toFixed(1)}`).join(" "));
    }
  }

  /* ---------------------------------------------------------------- timeline */

  function renderTimeline() {
    if (!state.settings) return;
    const W = 400, H = 120, PAD = 8;
    const now = performance.now();
    const span = state.settings.timeline_seconds * 1000;
    const cutoff = now - span;
    while (state.history.length && state.history[0].t < cutoff - 1000) state.history.shift();
    const pts = state.history.filter((p) => p.t >= cutoff);
    const confidence = state.settings.timeline_metric === "confidence";
    const xOf = (t) => ((t - cutoff) / span) * W;
    // valence/arousal live in [-1, 1] (zero line in the middle); confidence in [0, 1].
    const yOf = confidence
      ? (val) => H - PAD - val * (H - 2 * PAD)
      : (val) => H / 2 - val * (H / 2 - PAD);
    const zero = confidence ? H - PAD : H / 2;
    $("zero").setAttribute("y1", zero);
    $("zero").setAttribute("y2", zero);
    const key1 = confidence ? "c" : "v";
    const line1 = pts.map((p) => `${xOf(p.t).toFixed(1)},${yOf(p[key1]).toFixed(1)}`);
    $("line1").setAttribute("points", line1.join(" "));
    $("line2").setAttribute("points", confidence ? "" :
      pts.map((p) => `${xOf(p.t).toFixed(1)},${yOf(p.a).toFixed(1)}`).join(" "));
    if (line1.length > 1) {
      const first = xOf(pts[0].t).toFixed(1), lastX = xOf(pts[pts.length - 1].t).toFixed(1);
      $("area1").setAttribute("d", `M${first},${zero} L${line1.join(" L")} L${lastX},${zero} Z`);
    } else {
      $("area1").setAttribute("d", "");
    }
  }

  /* ---------------------------------------------------------------- visibility */

  function evaluateVisibility() {
    if (!state.settings) return;
    const now = performance.now();
    const hideMs = state.settings.hide_after * 1000;
    // With no events at all for a while (engine paused, worker gone), the
    // last label is stale: hide rather than show something no longer true.
    const staleMs = Math.max(hideMs, 5000);
    const ev = state.lastState;
    let visible = false;
    let unsure = false;
    if (ev && state.shown && now - state.lastStateAt <= staleMs && ev.visible !== false) {
      if (isSure(ev)) {
        visible = true;
      } else if (now - state.lastGoodAt < hideMs) {
        visible = true;
        unsure = true;
      }
    }
    state.visible = visible;
    widget.classList.toggle("is-hidden", !visible);
    widget.classList.toggle("is-unsure", visible && unsure);
  }

  /* ---------------------------------------------------------------- connection */

  let socket = null;
  let retryTimer = null;
  let attempt = 0;

  function connect() {
    const proto = location.protocol === "https:" ? "wss" : "ws";
    let ws;
    try {
      ws = new WebSocket(`${proto}://${location.host}/ws`);
    } catch (err) {
      scheduleReconnect();
      return;
    }
    socket = ws;
    ws.onopen = () => {
      attempt = 0;
      state.connected = true;
    };
    ws.onmessage = (msg) => {
      try {
        handleEvent(JSON.parse(msg.data));
      } catch (err) {
        console.warn("merlb overlay: bad event", err);
      }
    };
    ws.onclose = () => {
      if (socket !== ws) return;
      state.connected = false;
      socket = null;
      scheduleReconnect();
    };
    ws.onerror = () => { /* onclose follows and reconnects */ };
  }

  function scheduleReconnect() {
    if (retryTimer) return;
    // 0.5 s, 1 s, 2 s ... capped at 5 s, with jitter so several overlays do
    // not hammer a restarting worker in lockstep.
    const base = Math.min(5000, 500 * 2 ** Math.min(attempt, 4));
    const delay = base * (0.8 + Math.random() * 0.4);
    attempt += 1;
    state.reconnects += 1;
    retryTimer = setTimeout(() => { retryTimer = null; connect(); }, delay);
  }

  /* ---------------------------------------------------------------- demo mode */

  /* Made-up events for the settings preview (no engine needed). */
  function startDemo() {
    const order = ["happy", "surprise", "neutral", "sad", "angry", "happy", "fear", "neutral", "disgust"];
    // What a personalized model might say at the same moments, so `head=user`
    // and `head=behaviour` preview something too.
    const userOf = { happy: "hyped", surprise: "hyped", neutral: "focused", sad: "tilted",
                     angry: "tilted", fear: "tilted", disgust: "tilted" };
    const behaviours = Object.keys(BEHAVIOURS);
    let i = 0, since = 0, v = 0, a = 0, seq = 0;
    const tick = () => {
      since += 1;
      if (since > 30) { since = 0; i = (i + 1) % order.length; }
      const label = order[i];
      const target = EMOTIONS[label];
      v += (target.v - v) * 0.12 + (Math.random() - 0.5) * 0.06;
      a += (target.a - a) * 0.12 + (Math.random() - 0.5) * 0.06;
      const conf = 0.62 + 0.3 * Math.abs(Math.sin(seq / 17));
      handleEvent({
        v: 1, type: "state", seq: seq++, t: seq / 10, wall: Date.now() / 1000,
        face_present: true, speech: false, visible: true, label, confidence: conf,
        valence_score: clamp(v, -1, 1), arousal_score: clamp(a, -1, 1),
        heads: {
          user: { label: userOf[label], confidence: conf, probs: {} },
          behaviour: { label: behaviours[i % behaviours.length], confidence: conf, probs: {} },
        },
      });
    };
    // Seed the timeline with a believable past so the preview is not empty.
    const start = performance.now();
    const seed = Math.min(MAX_POINTS, state.settings.timeline_seconds * 10);
    for (let k = 0; k < seed; k++) tick();
    const span = seed * 100;
    state.history.forEach((p, idx) => { p.t = start - span + idx * 100; });
    setInterval(tick, 100);
  }

  /* ---------------------------------------------------------------- boot */

  // The settings page pushes changes into its preview without reloading it.
  window.addEventListener("message", (msg) => {
    if (msg.origin !== location.origin || !msg.data || msg.data.type !== "merlb-settings") return;
    if (!state.schema) { pendingQuery = msg.data.query; return; }  // applied once booted
    applySettings(window.MerlbSettings.fromQuery(state.schema, msg.data.query));
  });
  let pendingQuery = null;

  async function boot() {
    // The worker may be restarting right when OBS loads the page: keep trying.
    while (!state.schema) {
      try {
        state.schema = await window.MerlbSettings.loadSchema(location.href);
      } catch (err) {
        console.warn("merlb overlay: settings schema not reachable yet", err);
        await new Promise((r) => setTimeout(r, 2000));
      }
    }
    const settings = window.MerlbSettings.fromQuery(state.schema, location.search);
    applySettings(pendingQuery === null ? settings
      : { ...window.MerlbSettings.fromQuery(state.schema, pendingQuery), demo: settings.demo });
    setInterval(evaluateVisibility, 200);
    setInterval(() => { if (state.visible) renderTimeline(); }, 500);
    if (settings.demo) startDemo(); else connect();
  }

  boot();
})();
