/* Settings page: a form generated from settings.schema.json, a live preview,
 * and the browser-source URL to paste into OBS. */
(function () {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const form = $("form");
  const frame = $("frame");
  let schema = null;
  let values = null;
  let frameReady = false;

  function fieldId(key) { return `f-${key}`; }

  function control(key, prop) {
    const id = fieldId(key);
    if (prop.enum) {
      const sel = document.createElement("select");
      sel.id = id;
      for (const opt of prop.enum) {
        const o = document.createElement("option");
        o.value = opt;
        o.textContent = opt.replace(/_/g, " ");
        sel.appendChild(o);
      }
      sel.value = values[key];
      return sel;
    }
    if (prop.type === "boolean") {
      const box = document.createElement("input");
      box.type = "checkbox";
      box.id = id;
      box.checked = !!values[key];
      return box;
    }
    if (prop.type === "number" || prop.type === "integer") {
      const row = document.createElement("div");
      row.className = "row";
      const range = document.createElement("input");
      range.type = "range";
      range.id = id;
      range.min = prop.minimum;
      range.max = prop.maximum;
      range.step = prop.multipleOf || 1;
      range.value = values[key];
      const out = document.createElement("output");
      out.htmlFor = id;
      out.value = values[key];
      range.addEventListener("input", () => { out.value = range.value; });
      row.append(range, out);
      return row;
    }
    const input = document.createElement("input");
    input.id = id;
    input.type = prop.format === "color" ? "color" : "text";
    input.value = values[key];
    if (prop.pattern) input.pattern = prop.pattern;
    return input;
  }

  function readValue(key, prop) {
    const el = $(fieldId(key));
    const raw = prop.type === "boolean" ? String(el.checked) : el.value;
    const v = window.MerlbSettings.coerce(prop, raw);
    el.setCustomValidity(v === undefined ? "invalid value" : "");
    return v === undefined ? values[key] : v;
  }

  function buildForm() {
    const groups = new Map();
    for (const [key, prop] of Object.entries(schema.properties)) {
      if (prop["x-preview-only"]) continue;  // the preview has its own toggle
      const group = prop["x-group"] || "Other";
      if (!groups.has(group)) {
        const fs = document.createElement("fieldset");
        const lg = document.createElement("legend");
        lg.textContent = group;
        fs.appendChild(lg);
        groups.set(group, fs);
        form.appendChild(fs);
      }
      const wrap = document.createElement("div");
      wrap.className = "field";
      const label = document.createElement("label");
      label.htmlFor = fieldId(key);
      label.textContent = prop.title || key;
      const ctl = control(key, prop);
      if (prop.type === "boolean") {
        const line = document.createElement("div");
        line.className = "check";
        line.append(ctl, label);
        wrap.appendChild(line);
      } else {
        wrap.append(label, ctl);
      }
      if (prop.description) {
        const small = document.createElement("small");
        small.textContent = prop.description;
        wrap.appendChild(small);
      }
      groups.get(group).appendChild(wrap);
    }
    form.addEventListener("input", update);
    form.addEventListener("change", update);
  }

  function overlayUrl(extra) {
    const q = window.MerlbSettings.toQuery(schema, values);
    const url = new URL("overlay.html", location.href);
    const params = new URLSearchParams(q);
    for (const [k, v] of Object.entries(extra || {})) params.set(k, v);
    url.search = params.toString();
    return url.toString();
  }

  function previewQuery() {
    const params = new URLSearchParams(window.MerlbSettings.toQuery(schema, values));
    if ($("simulate").checked) params.set("demo", "1");
    return params.toString();
  }

  function update() {
    for (const [key, prop] of Object.entries(schema.properties)) {
      if (!prop["x-preview-only"]) values[key] = readValue(key, prop);
    }
    const url = overlayUrl();
    $("url").value = url;
    $("open").href = url;
    // Settings reach the running preview by message: no reload, no flicker.
    if (frameReady) frame.contentWindow.postMessage({ type: "merlb-settings", query: previewQuery() }, location.origin);
    history.replaceState(null, "", `?${window.MerlbSettings.toQuery(schema, values)}`);
  }

  function reloadPreview() {
    frameReady = false;
    frame.src = `overlay.html?${previewQuery()}`;
  }

  function fitPreview() {
    const box = $("preview");
    frame.style.transform = `scale(${box.clientWidth / 1920})`;
  }

  async function boot() {
    schema = await window.MerlbSettings.loadSchema(location.href);
    // Start from the settings in this page's own URL, so a variant can be reopened and edited.
    values = window.MerlbSettings.fromQuery(schema, location.search);
    buildForm();
    frame.addEventListener("load", () => { frameReady = true; });
    $("simulate").addEventListener("change", reloadPreview);
    $("bg").addEventListener("change", () => { $("preview").className = `preview bg-${$("bg").value}`; });
    $("copy").addEventListener("click", async () => {
      $("url").select();
      try {
        await navigator.clipboard.writeText($("url").value);
        $("status").textContent = "Copied. In OBS: Sources → + → Browser → paste as URL, 1920 × 1080.";
      } catch (err) {
        document.execCommand("copy");
        $("status").textContent = "Copied.";
      }
    });
    window.addEventListener("resize", fitPreview);
    fitPreview();
    reloadPreview();
    update();
  }

  boot().catch((err) => { $("status").textContent = `Cannot load the settings schema: ${err}`; });
})();
