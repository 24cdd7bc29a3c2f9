/* Overlay settings: URL parameters <-> values, validated against settings.schema.json.
 *
 * Shared by overlay.html and settings.html so the URL the settings page
 * produces is read exactly the same way by the overlay. Invalid values fall
 * back to the schema default (with a console warning) instead of breaking the
 * overlay: a typo in a browser-source URL must never blank the stream.
 */
(function () {
  "use strict";

  const TRUE = new Set(["1", "true", "yes", "on"]);
  const FALSE = new Set(["0", "false", "no", "off"]);

  function decimals(step) {
    const s = String(step);
    return s.includes(".") ? s.length - s.indexOf(".") - 1 : 0;
  }

  /* One raw string -> a valid value for `prop`, or undefined. */
  function coerce(prop, raw) {
    if (raw === null || raw === undefined) return undefined;
    const text = String(raw).trim();
    switch (prop.type) {
      case "boolean": {
        const t = text.toLowerCase();
        if (TRUE.has(t)) return true;
        if (FALSE.has(t)) return false;
        return undefined;
      }
      case "integer":
      case "number": {
        let n = Number(text);
        if (text === "" || !Number.isFinite(n)) return undefined;
        if (prop.type === "integer") n = Math.round(n);
        if (prop.minimum !== undefined) n = Math.max(prop.minimum, n);
        if (prop.maximum !== undefined) n = Math.min(prop.maximum, n);
        if (prop.multipleOf) n = Number(n.toFixed(decimals(prop.multipleOf)));
        return n;
      }
      default: {
        let s = text;
        if (prop.format === "color" && /^[0-9a-fA-F]{6}$/.test(s)) s = "#" + s;
        if (prop.format === "color") s = s.toLowerCase();
        if (prop.enum && !prop.enum.includes(s)) return undefined;
        if (prop.pattern && !new RegExp(prop.pattern).test(s)) return undefined;
        return s;
      }
    }
  }

  function defaults(schema) {
    const out = {};
    for (const [key, prop] of Object.entries(schema.properties)) out[key] = prop.default;
    return out;
  }

  /* URLSearchParams (or a query string) -> full settings object. */
  function fromQuery(schema, query) {
    const params = query instanceof URLSearchParams ? query : new URLSearchParams(query || "");
    const out = defaults(schema);
    for (const [key, prop] of Object.entries(schema.properties)) {
      if (!params.has(key)) continue;
      const value = coerce(prop, params.get(key));
      if (value === undefined) {
        console.warn(`merlb overlay: ignoring ${key}=${params.get(key)} (invalid); using ${prop.default}`);
      } else {
        out[key] = value;
      }
    }
    return out;
  }

  /* Settings -> query string holding only what differs from the defaults. */
  function toQuery(schema, values, { includePreviewOnly = false } = {}) {
    const params = new URLSearchParams();
    for (const [key, prop] of Object.entries(schema.properties)) {
      if (prop["x-preview-only"] && !includePreviewOnly) continue;
      const v = values[key];
      if (v === undefined || v === prop.default) continue;
      params.set(key, typeof v === "boolean" ? (v ? "1" : "0") : String(v));
    }
    return params.toString();
  }

  async function loadSchema(base) {
    const res = await fetch(new URL("settings.schema.json", base || location.href), { cache: "no-cache" });
    if (!res.ok) throw new Error(`settings.schema.json: HTTP ${res.status}`);
    return res.json();
  }

  window.MerlbSettings = { coerce, defaults, fromQuery, toQuery, loadSchema };
})();
