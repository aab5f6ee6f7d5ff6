// ferkit web page: send a photo or webcam frames to /v1/predict, draw the faces found and
// a bar chart of each face's expression scores. Plain JavaScript, no third-party code.
"use strict";

(() => {
  // the same colours as ferkit.recognize.draw_faces, by class index
  const PALETTE = [
    "#e6194b", "#3cb44b", "#ffe119", "#0082c8", "#f58230",
    "#911eb4", "#46f0f0", "#f032e6", "#d2f53c", "#fabed4",
  ];
  const MAX_CANVAS_SIDE = 1600; // the drawn copy of a photo, not what is sent
  const CAMERA_SIDE = 640; // webcam frames are sent at most this wide / tall
  const $ = (id) => document.getElementById(id);
  const el = {
    file: $("file"), camera: $("camera"), rate: $("rate"), status: $("status"),
    error: $("error"), errorMessage: $("error-message"), errorCode: $("error-code"),
    drop: $("drop"), canvas: $("canvas"), video: $("video"), summary: $("summary"),
    faces: $("faces"), timing: $("timing"), modelInfo: $("model-info"), formats: $("formats"),
  };
  const state = {
    classes: [],
    maxUpload: 10 * 1024 * 1024,
    maxPixels: 50000000,
    formats: el.formats.textContent, // "JPEG, PNG, ... or AVIF", from the server once known
    stream: null, // the webcam's MediaStream while it runs
    starting: false, // a webcam start is waiting for the browser (its permission prompt)
    timer: null,
    inFlight: false, // at most one webcam request at a time
    generation: 0, // bumped whenever a new photo or webcam run supersedes the last
    frame: document.createElement("canvas"), // the webcam frame being analysed
  };

  const pct = (x) => `${(100 * x).toFixed(1)}%`;
  const mb = (n) => `${(n / (1024 * 1024)).toFixed(1)} MB`;
  const megapixels = (n) => `${+(n / 1e6).toFixed(1)} megapixels`;
  const oneOf = (items) => (items.length > 1 ? `${items.slice(0, -1).join(", ")} or ${items[items.length - 1]}` : items.join(""));

  function colourOf(label) {
    const i = state.classes.indexOf(label);
    return PALETTE[(i < 0 ? 0 : i) % PALETTE.length];
  }

  function setStatus(text) {
    el.status.textContent = text;
  }

  // What a page user reads for an error of the service: its own messages are for
  // programmers (multipart fields, Content-Types); the code stays beside it.
  function plainMessage(err, httpStatus) {
    switch (err.code) {
      case "unsupported_media_type":
        return `This file is not an image ferkit can read (${state.formats}).`;
      case "corrupt_image":
        return "This image could not be read: the file is damaged, incomplete or not an image.";
      case "upload_too_large":
        return `This file is too large: the limit is ${mb(state.maxUpload)}.`;
      case "too_many_pixels":
        return `This picture has too many pixels: the limit is ${megapixels(state.maxPixels)}. Try a smaller copy.`;
      case "busy":
        return "The server is busy with other pictures. Try again in a moment.";
      default:
        if (httpStatus === 415) return `This file is not an image ferkit can read (${state.formats}).`;
        if (httpStatus === 413) return "This file is too large for the server.";
        return err.message || "Something went wrong.";
    }
  }

  function showError(err, httpStatus) {
    el.errorMessage.textContent = plainMessage(err, httpStatus);
    el.errorCode.textContent = `(${err.code || "error"}${httpStatus ? `, HTTP ${httpStatus}` : ""})`;
    el.error.hidden = false;
  }

  function clearError() {
    el.error.hidden = true;
    el.errorMessage.textContent = "";
    el.errorCode.textContent = "";
  }

  // ---- talking to the service ----

  async function post(body, contentType) {
    const init = { method: "POST", body };
    if (contentType) init.headers = { "Content-Type": contentType };
    let res;
    try {
      res = await fetch("v1/predict", init);
    } catch (e) {
      return { ok: false, status: 0, error: { code: "network", message: "Could not reach the ferkit server." } };
    }
    let data = null;
    try {
      data = await res.json();
    } catch (e) {
      data = null;
    }
    if (res.ok && data) return { ok: true, status: res.status, data };
    const error = (data && data.error) || { code: `http_${res.status}`, message: res.statusText || "Request failed." };
    const retry = Number(res.headers.get("Retry-After"));
    return { ok: false, status: res.status, error, retryAfter: Number.isFinite(retry) ? retry : 1 };
  }

  async function loadModelInfo() {
    try {
      const [models, health] = await Promise.all([
        fetch("v1/models").then((r) => r.json()),
        fetch("v1/health").then((r) => r.json()),
      ]);
      const m = models.models[0];
      state.classes = m.classes;
      state.maxUpload = health.limits.max_upload_bytes;
      state.maxPixels = health.limits.max_pixels;
      if (health.accepts) {
        // the file picker offers what this server reads (its Pillow may lack AVIF, say)
        state.formats = oneOf(health.accepts.formats);
        el.formats.textContent = state.formats;
        const images = health.accepts.media_types.filter((t) => t.startsWith("image/"));
        el.file.accept = [...images, ...health.accepts.extensions].join(",");
      }
      const arch = m.architecture ? ` (${m.architecture})` : "";
      el.modelInfo.textContent =
        `Model ${m.name}${arch}, expressions: ${m.classes.join(", ")}. ` +
        `Photos up to ${mb(state.maxUpload)}.`;
    } catch (e) {
      el.modelInfo.textContent = "The model information could not be loaded.";
    }
  }

  // ---- drawing ----

  async function decode(file) {
    if (window.createImageBitmap) {
      try {
        return await createImageBitmap(file, { imageOrientation: "from-image" });
      } catch (e) {
        // fall through to an <img>
      }
    }
    const url = URL.createObjectURL(file);
    try {
      const img = new Image();
      img.src = url;
      await img.decode();
      return img;
    } finally {
      URL.revokeObjectURL(url);
    }
  }

  // Draw `picture` (or a grey placeholder the size of the analysed image) with the faces.
  function drawResult(picture, data) {
    const iw = data.image.width;
    const ih = data.image.height;
    const scale = Math.min(1, MAX_CANVAS_SIDE / Math.max(iw, ih));
    const c = el.canvas;
    c.width = Math.max(1, Math.round(iw * scale));
    c.height = Math.max(1, Math.round(ih * scale));
    const ctx = c.getContext("2d");
    if (picture) {
      ctx.drawImage(picture, 0, 0, c.width, c.height);
    } else {
      ctx.fillStyle = "#d0d4da";
      ctx.fillRect(0, 0, c.width, c.height);
      ctx.fillStyle = "#333";
      ctx.font = `${Math.max(14, Math.round(c.width / 40))}px sans-serif`;
      ctx.fillText("(this browser cannot show this image format)", 12, 12 + Math.max(14, c.width / 40));
    }
    const sx = c.width / iw;
    const sy = c.height / ih;
    const line = Math.max(2, Math.round(Math.max(c.width, c.height) / 300));
    data.faces.forEach((face, i) => {
      const [x, y, w, h] = face.box;
      const bx = x * sx;
      const by = y * sy;
      const bw = w * sx;
      const bh = h * sy;
      const colour = colourOf(face.label);
      ctx.lineWidth = line;
      ctx.strokeStyle = colour;
      ctx.strokeRect(bx, by, bw, bh);
      const size = Math.round(Math.min(48, Math.max(13, 0.16 * bw)));
      ctx.font = `bold ${size}px sans-serif`;
      const text = `${i + 1} ${face.label} ${Math.round(100 * face.confidence)}%`;
      const tw = ctx.measureText(text).width;
      const pad = Math.max(2, Math.round(size / 5));
      const th = size + 2 * pad;
      const ty = by - th >= 0 ? by - th : by;
      ctx.fillStyle = colour;
      ctx.fillRect(bx - line / 2, ty, tw + 2 * pad, th);
      ctx.fillStyle = "#000";
      ctx.textBaseline = "top";
      ctx.fillText(text, bx - line / 2 + pad, ty + pad);
    });
    el.drop.dataset.empty = "false";
  }

  function faceChart(face, index) {
    const fig = document.createElement("figure");
    fig.className = "face";
    const cap = document.createElement("figcaption");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = colourOf(face.label);
    swatch.setAttribute("aria-hidden", "true");
    cap.append(swatch, `Face ${index + 1}: ${face.label} (${pct(face.confidence)})`);
    const list = document.createElement("ul");
    list.className = "bars";
    list.setAttribute("aria-label", `Expression scores of face ${index + 1}`);
    const names = state.classes.length
      ? state.classes.filter((c) => c in face.scores)
      : Object.keys(face.scores);
    for (const name of names) {
      const score = face.scores[name];
      const li = document.createElement("li");
      li.className = name === face.label ? "bar best" : "bar";
      const label = document.createElement("span");
      label.className = "name";
      label.textContent = name;
      const track = document.createElement("span");
      track.className = "track";
      track.setAttribute("aria-hidden", "true");
      const fill = document.createElement("span");
      fill.className = "fill";
      fill.style.width = `${Math.max(0, Math.min(100, 100 * score))}%`;
      fill.style.background = colourOf(name);
      track.append(fill);
      const value = document.createElement("span");
      value.className = "value";
      value.textContent = pct(score);
      li.append(label, track, value);
      list.append(li);
    }
    fig.append(cap, list);
    return fig;
  }

  function render(picture, data, source, live) {
    drawResult(picture, data);
    const n = data.faces.length;
    const parts = data.faces.map((f, i) => `face ${i + 1} ${f.label}${live ? "" : ` ${pct(f.confidence)}`}`);
    const summary = n === 0 ? `No face found in the ${source}.` : `${n} face${n > 1 ? "s" : ""} in the ${source}: ${parts.join(", ")}.`;
    // a live region repeats itself on every change: during the webcam, only on new labels
    if (el.summary.textContent !== summary) el.summary.textContent = summary;
    el.canvas.setAttribute("aria-label", summary);
    el.faces.replaceChildren(...data.faces.map(faceChart));
    const t = data.timing_ms;
    el.timing.textContent =
      `Model ${data.model}; image ${data.image.width} × ${data.image.height}; ` +
      `server time ${Math.round(t.total_ms)} ms (inference ${Math.round(t.inference_ms)} ms).`;
  }

  function clearResults(text) {
    el.faces.replaceChildren();
    el.timing.textContent = "";
    el.summary.textContent = text;
    el.canvas.setAttribute("aria-label", "No picture");
    el.drop.dataset.empty = "true";
  }

  // ---- photos ----

  async function analysePhoto(file) {
    if (!file) return;
    stopCamera();
    clearError();
    const gen = ++state.generation;
    if (file.size > state.maxUpload) {
      showError({ code: "upload_too_large", message: `The photo is ${mb(file.size)}; the limit is ${mb(state.maxUpload)}.` }, 413);
      clearResults("No result for this photo.");
      return;
    }
    setStatus(`Analysing ${file.name || "the photo"}…`);
    let picture = null;
    try {
      picture = await decode(file);
    } catch (e) {
      picture = null; // e.g. TIFF: the server reads it, the browser cannot show it
    }
    const form = new FormData();
    form.append("file", file, file.name || "photo");
    const result = await post(form);
    if (gen !== state.generation) return; // a newer photo or the webcam took over
    if (!result.ok) {
      setStatus("");
      showError(result.error, result.status);
      clearResults("No result for this photo.");
      return;
    }
    setStatus(`Done: ${file.name || "photo"}.`);
    render(picture, result.data, "photo", false);
  }

  // ---- webcam ----

  async function startCamera() {
    // a second click while the browser still asks for the camera would open a second
    // stream, and stopping would then leave one of them (and the camera light) on
    if (state.starting) return;
    clearError();
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      showError({ code: "no_camera", message: "This browser cannot use a webcam on this page (webcams need https or localhost)." });
      return;
    }
    const gen = state.generation;
    state.starting = true;
    el.camera.setAttribute("aria-busy", "true");
    setStatus("Starting the webcam…");
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({
        video: { width: { ideal: 640 }, height: { ideal: 480 } },
        audio: false,
      });
    } catch (e) {
      if (gen === state.generation) setStatus("");
      showError({ code: "camera_unavailable", message: `The webcam could not be started (${e.name}: ${e.message}).` });
      return;
    } finally {
      state.starting = false;
      el.camera.removeAttribute("aria-busy");
    }
    if (gen !== state.generation) {
      // a photo was chosen while the browser asked for the camera: the photo wins
      stream.getTracks().forEach((t) => t.stop());
      return;
    }
    state.generation++;
    state.stream = stream;
    el.video.srcObject = stream;
    try {
      await el.video.play();
    } catch (e) {
      // muted inline video normally plays; frames are still readable once loaded
    }
    el.camera.textContent = "Stop webcam";
    el.camera.setAttribute("aria-pressed", "true");
    setStatus("Webcam on: analysing frames.");
    schedule(0);
  }

  function stopCamera() {
    if (!state.stream) return;
    state.generation++;
    clearTimeout(state.timer);
    state.stream.getTracks().forEach((t) => t.stop());
    state.stream = null;
    el.video.srcObject = null;
    el.camera.textContent = "Start webcam";
    el.camera.setAttribute("aria-pressed", "false");
    setStatus("Webcam off.");
  }

  function schedule(delay) {
    clearTimeout(state.timer);
    state.timer = setTimeout(cameraTick, delay);
  }

  async function cameraTick() {
    // a frame of an earlier webcam run still awaiting its answer schedules this run's
    // first frame when it ends (below)
    if (!state.stream || state.inFlight) return;
    const gen = state.generation;
    const started = performance.now();
    let delay = 1000 / Number(el.rate.value || 2);
    state.inFlight = true;
    try {
      const v = el.video;
      if (!v.videoWidth) return; // not started yet: try again shortly
      const scale = Math.min(1, CAMERA_SIDE / Math.max(v.videoWidth, v.videoHeight));
      const f = state.frame;
      f.width = Math.round(v.videoWidth * scale);
      f.height = Math.round(v.videoHeight * scale);
      f.getContext("2d").drawImage(v, 0, 0, f.width, f.height);
      const blob = await new Promise((resolve) => f.toBlob(resolve, "image/jpeg", 0.85));
      if (!blob) return;
      const result = await post(blob, "image/jpeg");
      if (gen !== state.generation) return;
      if (result.ok) {
        clearError();
        render(f, result.data, "webcam picture", true);
      } else {
        showError(result.error, result.status);
        if (result.status === 503) delay = Math.max(delay, 1000 * result.retryAfter);
        else delay = Math.max(delay, 1000);
      }
    } finally {
      state.inFlight = false;
      if (state.stream && gen === state.generation) {
        schedule(Math.max(0, delay - (performance.now() - started)));
      } else if (state.stream) {
        schedule(0); // the webcam was stopped and started again while this frame was out
      }
    }
  }

  // ---- wiring ----

  el.file.addEventListener("change", () => {
    analysePhoto(el.file.files[0]);
  });
  el.camera.addEventListener("click", () => {
    if (state.stream) stopCamera();
    else startCamera();
  });
  el.drop.addEventListener("click", () => {
    if (!state.stream) el.file.click();
  });
  for (const type of ["dragenter", "dragover"]) {
    el.drop.addEventListener(type, (e) => {
      e.preventDefault();
      el.drop.classList.add("dragging");
    });
  }
  for (const type of ["dragleave", "dragend"]) {
    el.drop.addEventListener(type, () => el.drop.classList.remove("dragging"));
  }
  el.drop.addEventListener("drop", (e) => {
    e.preventDefault();
    el.drop.classList.remove("dragging");
    const file = e.dataTransfer && e.dataTransfer.files[0];
    if (file) analysePhoto(file);
  });
  // a photo dropped beside the zone must not make the browser leave the page
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
  document.addEventListener("paste", (e) => {
    const item = [...(e.clipboardData ? e.clipboardData.files : [])].find((f) => f.type.startsWith("image/"));
    if (item) analysePhoto(item);
  });

  loadModelInfo();
})();
