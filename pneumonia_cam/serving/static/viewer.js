// Pneumonia CAM viewer: uploads one image to the model server and shows its label, P(positive) against the
// operating point's threshold, and the class activation map over the decoded original. Vanilla JS, no
// external resources (the page has to work offline).
(() => {
  "use strict";

  const KEY_STORAGE = "pneumonia-cam.api-key";
  const DECIMALS = 4;
  const STATUS_TEXT = {
    400: "Bad request",
    401: "Unauthorized: this server needs an API key (see “API key”)",
    403: "Forbidden",
    404: "Not found",
    413: "File too large",
    415: "Unsupported file type (PNG, JPEG or DICOM only)",
    422: "The file could not be decoded as an image",
    429: "Too many requests",
    500: "Server error",
    503: "Server busy or not ready",
  };

  // the legend under the heat map, per colormap the server may be configured with (configs/cam)
  const COLORMAPS = {
    jet: ["#00008f", "#0000ff", "#00ffff", "#ffff00", "#ff0000", "#800000"],
    turbo: ["#30123b", "#4686fb", "#1be5b5", "#a4fc3c", "#fb7e21", "#7a0403"],
    inferno: ["#000004", "#420a68", "#932667", "#dd513a", "#fca50a", "#fcffa4"],
  };

  const $ = (id) => document.getElementById(id);
  const el = {
    status: $("status"),
    error: $("error"),
    fileInput: $("file-input"),
    dropZone: $("drop-zone"),
    fileName: $("file-name"),
    method: $("method"),
    opacity: $("opacity"),
    opacityValue: $("opacity-value"),
    label: $("label"),
    probability: $("probability"),
    probabilityCaption: $("probability-caption"),
    threshold: $("threshold"),
    probBar: $("prob-bar"),
    probFill: $("prob-fill"),
    probMarker: $("prob-marker"),
    probMarkerLabel: $("prob-marker-label"),
    decision: $("decision"),
    meta: $("result-meta"),
    original: $("original"),
    originalPlaceholder: $("original-placeholder"),
    camBase: $("cam-base"),
    overlay: $("overlay"),
    overlayPlaceholder: $("overlay-placeholder"),
    camCaption: $("cam-caption"),
    download: $("download-overlay"),
    legendRamp: document.querySelector(".legend-ramp"),
    facts: $("model-facts"),
    keyPanel: $("api-key-panel"),
    keyForm: $("api-key-form"),
    keyInput: $("api-key"),
    keyClear: $("api-key-clear"),
  };

  const state = { file: null, model: null, seq: 0 };

  // ---------------------------------------------------------------- helpers

  function apiKey() {
    try {
      return sessionStorage.getItem(KEY_STORAGE) || el.keyInput.value.trim();
    } catch (_) {
      return el.keyInput.value.trim(); // storage disabled: the key lives only in the field
    }
  }

  function authHeaders() {
    const key = apiKey();
    return key ? { Authorization: `Bearer ${key}` } : {};
  }

  function setStatus(text, kind = "idle") {
    el.status.textContent = text;
    el.status.dataset.state = kind;
  }

  function fmt(value, decimals = DECIMALS) {
    return typeof value === "number" && Number.isFinite(value) ? value.toFixed(decimals) : "—";
  }

  function formatBytes(n) {
    if (typeof n !== "number") return "";
    if (n < 1024) return `${n}\u00a0B`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)}\u00a0kB`;
    return `${(n / 1024 / 1024).toFixed(1)}\u00a0MB`;
  }

  function formatDetail(detail) {
    if (detail == null) return "";
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail)) {
      // FastAPI validation errors: [{loc, msg, type}, ...]
      return detail
        .map((d) => (d && d.msg ? `${(d.loc || []).join(".")}: ${d.msg}` : JSON.stringify(d)))
        .join("; ");
    }
    return JSON.stringify(detail);
  }

  /** The server's own explanation of a failed response: {"detail": ...} or its text. */
  async function responseError(resp) {
    let detail = "";
    try {
      const text = await resp.text();
      try {
        const body = JSON.parse(text);
        detail = formatDetail(body && "detail" in body ? body.detail : body);
      } catch (_) {
        detail = text.trim().slice(0, 500);
      }
    } catch (_) {
      detail = "";
    }
    const err = new Error(detail || resp.statusText || "Request failed");
    err.status = resp.status;
    err.title = `HTTP ${resp.status} · ${STATUS_TEXT[resp.status] || resp.statusText || "Error"}`;
    const retry = resp.headers.get("Retry-After");
    if (retry) err.hint = `The server asks to retry after ${retry} s.`;
    if (resp.status === 401) err.hint = "Enter the server's API key under “API key” and try again.";
    return err;
  }

  function showError(err) {
    el.error.replaceChildren();
    const title = document.createElement("strong");
    title.textContent = err.title || "Error";
    const detail = document.createElement("span");
    detail.className = "error-detail";
    detail.textContent = err.message;
    el.error.append(title, detail);
    if (err.hint) {
      const hint = document.createElement("p");
      hint.className = "error-hint";
      hint.textContent = err.hint;
      el.error.append(hint);
    }
    el.error.dataset.status = err.status ?? "";
    el.error.hidden = false;
  }

  function clearError() {
    el.error.hidden = true;
    el.error.replaceChildren();
    delete el.error.dataset.status;
  }

  async function fetchJson(url, options = {}) {
    let resp;
    try {
      resp = await fetch(url, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
    } catch (cause) {
      const err = new Error(`Cannot reach the model server (${cause.message}).`);
      err.title = "Network error";
      throw err;
    }
    if (!resp.ok) throw await responseError(resp);
    return resp.json();
  }

  function loadImage(img, src) {
    return new Promise((resolve, reject) => {
      img.onload = () => resolve(img);
      img.onerror = () => reject(new Error("The browser could not display an image returned by the server."));
      img.src = src;
    });
  }

  const png = (b64) => `data:image/png;base64,${b64}`;

  // ---------------------------------------------------------------- model facts

  function positiveName(opPoint, classNames) {
    const p = opPoint && opPoint.positive_class;
    if (typeof p === "number" && Array.isArray(classNames)) return classNames[p] ?? String(p);
    return p == null ? null : String(p);
  }

  function renderFacts(m) {
    const info = m.model || m.model_info || m;
    const op = m.operating_point || {};
    const classes = m.class_names || info.class_names;
    const sha = info.checkpoint_sha256 || "";
    const rows = [
      ["Backbone", info.backbone],
      ["Image size", info.image_size ? `${info.image_size} × ${info.image_size} px` : null],
      ["Checkpoint", sha ? { code: `${sha.slice(0, 12)}…`, title: `SHA-256 ${sha}` } : null],
      ["Classes", Array.isArray(classes) ? classes.join(", ") : null],
      ["Positive class", positiveName(op, classes)],
      ["Threshold", typeof op.threshold === "number" ? fmt(op.threshold) : null],
      ["Temperature", typeof op.temperature === "number" ? fmt(op.temperature, 3) : null],
      ["Threshold rule", op.method],
      ["Chosen on", op.chosen_on],
      ["Source", op.source],
      ["Precision", m.precision ?? info.precision],
      ["Device", m.device ?? info.device],
    ];
    el.facts.replaceChildren();
    for (const [name, value] of rows) {
      if (value == null || value === "") continue;
      const dt = document.createElement("dt");
      dt.textContent = name;
      const dd = document.createElement("dd");
      if (typeof value === "object") {
        const code = document.createElement("code");
        code.textContent = value.code;
        dd.title = value.title;
        dd.append(code);
      } else {
        dd.textContent = String(value);
      }
      el.facts.append(dt, dd);
    }
  }

  function factsMessage(text) {
    el.facts.replaceChildren();
    const dt = document.createElement("dt");
    dt.textContent = "Status";
    const dd = document.createElement("dd");
    dd.textContent = text;
    el.facts.append(dt, dd);
  }

  async function waitReady(deadline = Date.now() + 120000) {
    for (;;) {
      try {
        const resp = await fetch("/ready", { headers: authHeaders() });
        if (resp.ok || resp.status === 401) return;
      } catch (_) {
        /* server still starting */
      }
      if (Date.now() > deadline) throw new Error("The model server did not become ready.");
      setStatus("Model loading…", "busy");
      await new Promise((r) => setTimeout(r, 1000));
    }
  }

  async function loadModel() {
    try {
      await waitReady();
      const m = await fetchJson("/v1/model");
      state.model = m;
      renderFacts(m);
      const op = m.operating_point || {};
      const pos = positiveName(op, m.class_names);
      if (pos) el.probabilityCaption.textContent = `P(${pos})`;
      if (typeof op.threshold === "number") setThreshold(op.threshold);
      const colors = COLORMAPS[m.cam && m.cam.colormap];
      if (colors) el.legendRamp.style.background = `linear-gradient(90deg, ${colors.join(", ")})`;
      if (!state.file) setStatus("Ready: drop or choose an image");
    } catch (err) {
      factsMessage(err.status === 401 ? "API key required" : "Unavailable");
      if (err.status === 401) el.keyPanel.open = true;
      setStatus(err.status === 401 ? "API key required" : "Model information unavailable", "error");
      showError(err);
    }
  }

  // ---------------------------------------------------------------- result

  function setThreshold(t) {
    el.threshold.textContent = fmt(t);
    el.probMarker.style.left = `${Math.min(Math.max(t, 0), 1) * 100}%`;
    el.probMarker.title = `Decision threshold ${fmt(t)}`;
    el.probMarkerLabel.textContent = `threshold ${fmt(t)}`;
  }

  function resetResult() {
    el.label.textContent = "—";
    el.label.dataset.state = "empty";
    el.probability.textContent = "—";
    el.probFill.style.width = "0";
    el.probBar.dataset.state = "";
    el.probBar.setAttribute("aria-valuenow", "0");
    el.meta.textContent = "";
    el.decision.textContent = "";
    el.camCaption.textContent = "Class activation map";
    for (const img of [el.original, el.camBase, el.overlay]) {
      img.hidden = true;
      img.removeAttribute("src");
    }
    delete el.overlay.dataset.method;
    el.originalPlaceholder.hidden = false;
    el.overlayPlaceholder.hidden = false;
    el.download.hidden = true;
    document.body.dataset.result = "";
  }

  async function render(result, file) {
    const probs = result.probabilities || {};
    const pos = result.positive_class ?? positiveName(state.model?.operating_point, state.model?.class_names);
    const p = probs[pos];
    const isPositive = result.label === pos;

    // images first, so the numbers and the heat map appear together
    const originalSrc = result.original_png ? png(result.original_png) : URL.createObjectURL(file);
    const cam = result.cam || null;
    await loadImage(el.original, originalSrc);
    el.camBase.src = originalSrc;
    if (cam && cam.heatmap_png) {
      await loadImage(el.overlay, png(cam.heatmap_png));
      el.overlay.dataset.method = cam.method || el.method.value;
      el.overlay.hidden = false;
      el.camBase.hidden = false;
      el.overlayPlaceholder.hidden = true;
      const methodName = (cam.method || el.method.value) === "gradcam" ? "Grad-CAM" : "CAM";
      el.camCaption.textContent = `${methodName} · ${cam.target_class ?? result.label}`;
      if (cam.overlay_png) {
        el.download.href = png(cam.overlay_png);
        el.download.download = `${(file.name || "image").replace(/\.[^.]+$/, "")}_${cam.method || "cam"}.png`;
        el.download.hidden = false;
      }
    } else {
      el.overlay.hidden = true;
      el.camBase.hidden = false;
      el.overlayPlaceholder.hidden = true;
      el.camCaption.textContent = "Class activation map (not returned)";
    }
    el.original.hidden = false;
    el.originalPlaceholder.hidden = true;

    el.label.textContent = result.label;
    el.label.dataset.state = isPositive ? "positive" : "negative";
    el.probabilityCaption.textContent = `P(${pos})`;
    el.probability.textContent = fmt(p);
    el.probability.title = typeof p === "number" ? `P(${pos}) = ${p}` : "";
    if (typeof result.threshold === "number") setThreshold(result.threshold);
    el.probFill.style.width = `${Math.min(Math.max(p || 0, 0), 1) * 100}%`;
    el.probBar.dataset.state = isPositive ? "positive" : "negative";
    el.probBar.setAttribute("aria-valuenow", String(p ?? 0));
    el.probBar.setAttribute(
      "aria-valuetext",
      `P(${pos}) ${fmt(p)}, threshold ${fmt(result.threshold)}: ${result.label}`
    );

    if (typeof p === "number" && typeof result.threshold === "number") {
      const relation = p >= result.threshold ? "≥" : "<";
      el.decision.textContent =
        `P(${pos}) ${fmt(p)} ${relation} threshold ${fmt(result.threshold)} → ${result.label}`;
    }

    const input = result.input || {};
    const timing = result.timing_ms || {};
    const parts = [];
    if (input.format) {
      const size = input.width && input.height ? ` ${input.width}×${input.height}` : "";
      parts.push(`${String(input.format).toUpperCase()}${size}, ${formatBytes(input.bytes)}`);
    }
    if (input.photometric_interpretation) parts.push(input.photometric_interpretation);
    if (typeof result.temperature === "number" && result.temperature !== 1) {
      parts.push(`temperature ${fmt(result.temperature, 3)}`);
    }
    if (typeof timing.total === "number") {
      const inf = typeof timing.inference === "number" ? ` (inference ${timing.inference.toFixed(0)} ms)` : "";
      parts.push(`${timing.total.toFixed(0)} ms${inf}`);
    }
    if (result.request_id) parts.push(`request ${String(result.request_id).slice(0, 12)}`);
    el.meta.textContent = parts.join(" · ");
    document.body.dataset.result = cam?.method || el.method.value;
  }

  async function analyse() {
    const file = state.file;
    if (!file) return;
    const seq = ++state.seq;
    const method = el.method.value;
    clearError();
    document.body.dataset.result = "pending";
    setStatus(`Analysing ${file.name} (${method === "gradcam" ? "Grad-CAM" : "CAM"})…`, "busy");
    const form = new FormData();
    form.append("file", file, file.name);
    const query = new URLSearchParams({ cam: "true", method, original: "true" });
    try {
      const result = await fetchJson(`/v1/predict?${query}`, { method: "POST", body: form });
      if (seq !== state.seq) return; // a newer request replaced this one
      await render(result, file);
      const total = result.timing_ms?.total;
      setStatus(typeof total === "number" ? `Done in ${total.toFixed(0)} ms` : "Done");
    } catch (err) {
      if (seq !== state.seq) return;
      resetResult();
      document.body.dataset.result = "error";
      showError(err);
      setStatus("Request failed", "error");
    }
  }

  function chooseFile(file) {
    if (!file) return;
    state.file = file;
    el.fileName.textContent = `${file.name} · ${formatBytes(file.size)}`;
    analyse();
  }

  // ---------------------------------------------------------------- wiring

  el.fileInput.addEventListener("change", () => {
    chooseFile(el.fileInput.files && el.fileInput.files[0]);
  });

  el.dropZone.addEventListener("click", (event) => {
    if (event.target.closest("label, input")) return; // the label already opens the chooser
    el.fileInput.click();
  });
  el.dropZone.addEventListener("keydown", (event) => {
    if (event.target !== el.dropZone) return;
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      el.fileInput.click();
    }
  });
  for (const type of ["dragenter", "dragover"]) {
    el.dropZone.addEventListener(type, (event) => {
      event.preventDefault();
      event.dataTransfer.dropEffect = "copy";
      el.dropZone.classList.add("dragover");
    });
  }
  for (const type of ["dragleave", "dragend"]) {
    el.dropZone.addEventListener(type, () => el.dropZone.classList.remove("dragover"));
  }
  el.dropZone.addEventListener("drop", (event) => {
    event.preventDefault();
    el.dropZone.classList.remove("dragover");
    chooseFile(event.dataTransfer.files && event.dataTransfer.files[0]);
  });
  // a file dropped next to the zone must not navigate away from the page
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());

  function applyOpacity() {
    const value = Number(el.opacity.value);
    el.overlay.style.opacity = String(value / 100);
    el.opacityValue.textContent = `${value}%`;
    el.opacity.setAttribute("aria-valuetext", `${value} percent`);
  }
  el.opacity.addEventListener("input", applyOpacity);
  el.opacity.addEventListener("change", applyOpacity);

  el.method.addEventListener("change", () => {
    if (state.file) analyse();
  });

  el.keyInput.value = apiKey();
  el.keyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const key = el.keyInput.value.trim();
    try {
      if (key) sessionStorage.setItem(KEY_STORAGE, key);
      else sessionStorage.removeItem(KEY_STORAGE);
    } catch (_) {
      /* storage disabled: the key lives only in the field */
    }
    clearError();
    setStatus(key ? "API key saved for this tab" : "API key cleared");
    loadModel();
  });
  el.keyClear.addEventListener("click", () => {
    el.keyInput.value = "";
    try {
      sessionStorage.removeItem(KEY_STORAGE);
    } catch (_) {
      /* nothing stored */
    }
    setStatus("API key cleared");
  });

  applyOpacity();
  resetResult();
  loadModel();
})();
