// The review page: the queue, one candidate at a time on its image, verdicts by click or key.
// Talks only to its own origin (/api/...); all text from the server is set with textContent.
"use strict";

(function () {
  const KEY_GUARD_MS = 250;
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const $ = (id) => document.getElementById(id);
  const canvas = $("image");
  const zoom = $("zoom");
  const state = {
    items: [], index: 0, image: null, bitmap: null, last: null, k: 1,
    drawing: false, drag: null, missed: null, missedKey: null, drawn: null, keysFrom: 0,
    mode: "queue", // or "adjudicate": settling disagreements
    bitmaps: new Map(), // request id -> decoded frame: each frame is fetched and decoded once
    view: null, // a CT volume candidate's planes as shown: { center, width, offset } (mm)
  };
  const PLANE_NAMES = ["Cross-section", "Along the vessel (1)", "Along the vessel (2)"];
  const BITMAPS_KEPT = 4;

  function newKey() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function say(text, kind) {
    const box = $("message");
    box.textContent = text;
    box.className = kind === "info" ? "info" : "";
    box.hidden = !text;
  }

  async function api(path, body) {
    const init = { credentials: "same-origin", headers: {} };
    if (body !== undefined) {
      init.method = "POST";
      init.headers["Content-Type"] = "application/json";
      init.headers["X-CSRF-Token"] = csrf;
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      throw new Error("The review page cannot reach its own server; check the network and retry.");
    }
    const data = await response.json().catch(() => ({}));
    if (!response.ok) {
      if (data.signin) {
        window.location.assign("/signin?m=" + encodeURIComponent(data.signin));
      }
      throw new Error(data.error || ("The server answered " + response.status));
    }
    return data;
  }

  function fmt(value, digits) {
    return value === null || value === undefined ? "n/a" : Number(value).toFixed(digits);
  }

  function endOfQueue() {
    // what is left, and why this reviewer gets none of it: the rest may be claimed by others
    const p = state.progress;
    if (p && p.claimed_by_others > 0 && p.claimed_by_others >= p.unlabeled) {
      const until = p.claims_end ? new Date(p.claims_end) : null;
      return "Nothing is left for you: the " + p.claimed_by_others + " unlabeled item(s) left " +
        "are being reviewed by other reviewers now. An item comes back when its reviewer skips " +
        "it or signs out" + (until && !isNaN(until) ? ", or when its claim ends (the first at " +
        until.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) + ")" : "") +
        ". Load the queue again then.";
    }
    if (p && p.unlabeled === 0) return "The queue is empty: every candidate has a label.";
    return "You have reached the end of this queue. Load it again for more.";
  }

  async function refreshProgress() {
    try {
      const p = await api("/api/progress");
      state.progress = p;
      const versions = p.versions.map((v) =>
        "v" + v.model_version + " " + (v.precision === null ? "n/a" :
          Math.round(100 * v.precision) + "% (" + v.confirmed + " of " + (v.confirmed + v.dismissed) + ")"));
      $("progress").textContent = "Reviewed in this sitting: " + p.reviewed +
        " · Queue depth: " + p.unlabeled + " unlabeled" +
        " · Live precision: " + (versions.length ? versions.join(", ") : "no verdicts yet");
    } catch (err) {
      say(err.message);
    }
  }

  async function loadQueue() {
    say("");
    const variant = $("variant").value;
    const limit = $("limit").value;
    try {
      const q = await api("/api/queue?variant=" + encodeURIComponent(variant) + "&limit=" + encodeURIComponent(limit));
      // all candidates of one frame in a row, frames in the order of their best candidate
      const frames = new Map();
      for (const item of q.items) {
        if (!frames.has(item.request_id)) frames.set(item.request_id, []);
        frames.get(item.request_id).push(item);
      }
      let frameNo = 0;
      for (const group of frames.values()) {
        frameNo += 1;
        group.forEach((item, k) => Object.assign(item, { frameNo: frameNo, ordinal: k + 1, ofFrame: group.length }));
      }
      start("queue", [].concat(...frames.values()));
      tell(q.notices);
      if (!state.items.length) {
        await refreshProgress();
        $("empty").textContent = endOfQueue();
      }
      $("empty").hidden = state.items.length > 0;
      $("work").hidden = state.items.length === 0;
      if (state.items.length) await show();
    } catch (err) {
      say(err.message);
    }
    refreshProgress();
  }

  function start(mode, items) {
    state.mode = mode;
    state.items = items.map((item) => Object.assign(item, {
      keys: { confirm: newKey(), dismiss: newKey() }, done: false,
    }));
    state.index = 0;
    state.last = null;
    $("undo").disabled = true;
    document.body.classList.toggle("adjudicating", mode === "adjudicate");
  }

  // Settling disagreements: each disputed candidate on its frame with every verdict given;
  // a reviewer who gave one of them cannot settle it (the server refuses too).
  async function loadDisputes() {
    say("");
    try {
      const d = await api("/api/conflicts");
      const open = d.conflicts.filter((c) => !c.yours);
      const own = d.conflicts.length - open.length;
      start("adjudicate", open.map((c, k) => Object.assign(c, {
        probability: null, score: null, model_version: "", frameNo: k + 1, ordinal: 1, ofFrame: 1,
      })));
      $("empty").textContent = "No disagreement waits for you to settle.";
      $("empty").hidden = state.items.length > 0;
      $("work").hidden = state.items.length === 0;
      if (own) {
        say(own + " disagreement(s) include your own verdict; another reviewer settles those.", "info");
      }
      if (state.items.length) await show();
    } catch (err) {
      say(err.message);
    }
  }

  function tell(notices) {
    if (!notices || !notices.length) return;
    const lines = notices.map((n) => n.other_reviewer + " disagrees on candidate " +
      n.candidate_id.slice(0, 12) + "… (you: " + n.yours + ", " + n.other_reviewer + ": " + n.theirs +
      "). It waits for another reviewer to settle it.");
    say(lines.join(" "), "info");
  }

  async function frameBitmap(requestId) {
    if (state.bitmaps.has(requestId)) return state.bitmaps.get(requestId);
    const r = await fetch("/api/image/" + encodeURIComponent(requestId) + "/png", { credentials: "same-origin" });
    if (!r.ok) throw new Error("The image could not be loaded.");
    const bitmap = await createImageBitmap(await r.blob());
    state.bitmaps.set(requestId, bitmap);
    while (state.bitmaps.size > BITMAPS_KEPT) state.bitmaps.delete(state.bitmaps.keys().next().value);
    return bitmap;
  }

  function mm(v) {
    return (v >= 0 ? "+" : "") + v.toFixed(1);
  }

  function volumeWhere(volume) {
    // a CT reader's names: the series, the slice in it, the position in the patient (mm)
    const p = volume.point_mm;
    return "series …" + volume.series_uid.slice(-12) + ", slice " + (volume.slice_index + 1) +
      " of its slice order, at (" + p.map((v) => v.toFixed(1)).join(", ") + ") mm patient";
  }

  function where(item) {
    if (item.volume) {
      return "PE candidate " + item.ordinal + " of " + item.ofFrame + " in a CT volume (" +
        volumeWhere(item.volume) + ")";
    }
    // one name for each: the page's own count of the images it serves ("image 4 of this
    // queue") and where that image is in its source ("frame 0 of source …1a2b")
    const source = item.source_id ? " of source …" + item.source_id.slice(-8) : "";
    return "candidate " + item.ordinal + " of " + item.ofFrame + " on image " + item.frameNo +
      " of this queue (frame " + (item.frame_index || 0) + source + ")";
  }

  async function show() {
    state.drawn = null; // no verdict and no key until this item is on screen
    const item = state.items[state.index];
    if (!item) {
      $("work").hidden = true;
      $("empty").hidden = false;
      $("empty").textContent = state.mode === "adjudicate"
        ? "Every disagreement shown has been settled." : endOfQueue();
      refreshProgress().then(() => {
        if (state.mode === "queue" && !state.items[state.index]) $("empty").textContent = endOfQueue();
      });
      return;
    }
    stopDrawing();
    $("work").classList.add("loading");
    try {
      // the labels as they are now; the frame itself only when it is not the one on screen
      const [image, bitmap] = await Promise.all([
        api("/api/image/" + encodeURIComponent(item.request_id)),
        frameBitmap(item.request_id),
      ]);
      if (state.items[state.index] !== item) return; // moved on meanwhile
      state.image = image;
      state.bitmap = bitmap;
      item.volume = image.volume;
      showVolumeTools(image.volume);
      $("note").value = "";
      $("position").textContent = (state.index + 1) + " of " + state.items.length + " · " + where(item);
      $("probability").textContent = fmt(item.probability, 3);
      $("score").textContent = fmt(item.score, 3);
      $("version").textContent = item.model_version || "n/a";
      $("verdicts").textContent = (item.verdicts || []).map((v) =>
        v.reviewer + ": " + v.label + (v.note ? " (" + v.note + ")" : "")).join("; ");
      const mine = image.candidates.find((c) => c.candidate_id === item.candidate_id);
      if (mine && state.mode === "queue") item.probability = mine.probability;
      const label = mine ? mine.label + (mine.labeled_by ? " (by " + mine.labeled_by + ")" : "") : "unknown";
      $("label").textContent = label + (mine && mine.conflict ? " · CONFLICT" : "");
      draw();
      $("work").classList.remove("loading");
      state.drawn = item;
      state.keysFrom = performance.now() + KEY_GUARD_MS;
    } catch (err) {
      say(err.message);
    }
  }

  function showVolumeTools(volume) {
    $("volume-tools").hidden = !volume;
    if (!volume) {
      state.view = null;
      return;
    }
    state.view = { center: volume.window[0], width: volume.window[1], offset: 0 };
    const preset = volume.window.join(",");
    const known = Array.from($("window-preset").options).some((o) => o.value === preset);
    $("window-preset").value = known ? preset : "custom";
    $("window-center").value = volume.window[0];
    $("window-width").value = volume.window[1];
    $("volume-where").textContent = "A PE candidate of a CT series: " + volumeWhere(volume) + ".";
    scrollWhere();
  }

  function scrollWhere() {
    const v = state.view, volume = state.image && state.image.volume;
    if (!v || !volume) return;
    $("scroll-where").textContent = "Cross-section at " + mm(v.offset) + " mm along the vessel " +
      "from the candidate (up to ±" + volume.scroll_limit_mm + " mm: the archived block ends " +
      "there) · window C " + v.center + ", W " + v.width + ".";
    $("scroll-back").disabled = v.offset <= -volume.scroll_limit_mm;
    $("scroll-on").disabled = v.offset >= volume.scroll_limit_mm;
  }

  // A new window or cross-section: the planes drawn again by the server, from the archived HU.
  async function refreshPlanes() {
    const item = state.items[state.index], v = state.view;
    if (!item || !v) return;
    const url = "/api/image/" + encodeURIComponent(item.request_id) + "/png?center=" +
      encodeURIComponent(v.center) + "&width=" + encodeURIComponent(v.width) +
      "&offset=" + encodeURIComponent(v.offset);
    try {
      const r = await fetch(url, { credentials: "same-origin" });
      if (!r.ok) {
        const data = await r.json().catch(() => ({}));
        throw new Error(data.error || "The planes could not be drawn.");
      }
      const bitmap = await createImageBitmap(await r.blob());
      if (state.items[state.index] !== item) return;
      state.bitmap = bitmap;
      scrollWhere();
      draw();
    } catch (err) {
      say(err.message);
    }
  }

  function scroll(step) {
    const v = state.view, volume = state.image && state.image.volume;
    if (!v || !volume) return;
    const next = Math.max(-volume.scroll_limit_mm, Math.min(volume.scroll_limit_mm, v.offset + step));
    if (next === v.offset) return;
    v.offset = next;
    refreshPlanes();
  }

  function applyWindow() {
    const v = state.view;
    if (!v) return;
    const center = Number($("window-center").value), width = Number($("window-width").value);
    if (!isFinite(center) || !isFinite(width) || width < 1) {
      say("The window needs a centre and a width of at least 1 HU.");
      return;
    }
    v.center = center;
    v.width = width;
    refreshPlanes();
  }

  // The three planes named, and the candidate marked on each: boxed on the cross-section (dashed
  // while the cross-section is moved off it), boxed at the centre of both views along the vessel,
  // where a line shows the cross-section's place.
  function drawVolume(ctx, k, item, volume) {
    const panel = volume.panel, v = state.view || { offset: 0 };
    const b = item.box;
    ctx.lineWidth = 2;
    ctx.strokeStyle = "#ffd54a";
    for (let i = 0; i < 3; i++) {
      ctx.setLineDash(i === 0 && v.offset !== 0 ? [6, 4] : []);
      ctx.strokeRect((b.x + i * panel) * k, b.y * k, b.width * k, b.height * k);
    }
    ctx.setLineDash([]);
    const row = (panel / 2 + v.offset / volume.mm_per_pixel) * k;
    ctx.strokeStyle = "#80deea";
    ctx.lineWidth = 1;
    for (let i = 1; i < 3; i++) {
      ctx.beginPath();
      ctx.moveTo(i * panel * k, row);
      ctx.lineTo((i + 1) * panel * k, row);
      ctx.stroke();
    }
    if (state.drawing) { // how far from the candidate a missed finding may be marked
      ctx.setLineDash([4, 4]);
      ctx.strokeStyle = "#4dd0e1";
      const r = (volume.missed_reach_mm / volume.mm_per_pixel) * k;
      for (let i = 0; i < 3; i++) {
        ctx.beginPath();
        ctx.arc((i + 0.5) * panel * k, (panel / 2) * k, r, 0, 2 * Math.PI);
        ctx.stroke();
      }
      ctx.setLineDash([]);
    }
    ctx.font = Math.max(11, Math.round(13 * k)) + "px sans-serif";
    ctx.textBaseline = "top";
    for (let i = 0; i < 3; i++) {
      const text = PLANE_NAMES[i] + (i === 0 ? " " + mm(v.offset) + " mm" : "");
      const w = ctx.measureText(text).width + 8;
      ctx.fillStyle = "rgba(0,0,0,0.65)";
      ctx.fillRect(i * panel * k + 2, 2, w, Math.max(15, 17 * k));
      ctx.fillStyle = "#fff";
      ctx.fillText(text, i * panel * k + 6, 4);
    }
    ctx.strokeStyle = "#000";
    ctx.lineWidth = 2;
    for (let i = 1; i < 3; i++) {
      ctx.beginPath();
      ctx.moveTo(i * panel * k, 0);
      ctx.lineTo(i * panel * k, panel * k);
      ctx.stroke();
    }
  }

  function draw() {
    const item = state.items[state.index];
    const image = state.image;
    if (!item || !image || !state.bitmap) return;
    // Drawn at the size it is shown (small images enlarged), boxes in image coordinates * k.
    const room = Math.max(320, $("stage").clientWidth);
    const k = Math.min(room / image.width, (window.innerHeight * 0.8) / image.height);
    state.k = k;
    canvas.width = Math.round(image.width * k);
    canvas.height = Math.round(image.height * k);
    const ctx = canvas.getContext("2d");
    ctx.drawImage(state.bitmap, 0, 0, canvas.width, canvas.height);
    const rect = (b) => ctx.strokeRect(b.x * k, b.y * k, b.width * k, b.height * k);
    if (image.volume) {
      drawVolume(ctx, k, item, image.volume);
      const point = state.missed;
      if (point) { // the missed finding: a cross at the point clicked
        const cx = (point.x + point.width / 2) * k, cy = (point.y + point.height / 2) * k;
        ctx.strokeStyle = "#4dd0e1";
        ctx.lineWidth = 2;
        ctx.beginPath();
        ctx.moveTo(cx - 8, cy); ctx.lineTo(cx + 8, cy);
        ctx.moveTo(cx, cy - 8); ctx.lineTo(cx, cy + 8);
        ctx.stroke();
      }
      drawZoom(item.box);
      return;
    }
    for (const c of image.candidates) {
      if (c.candidate_id === item.candidate_id) continue;
      const savedMissed = c.origin === "missed" && c.label !== "unlabeled";
      // a reviewer's saved missed finding: solid cyan, not one of the model's faint candidates
      ctx.strokeStyle = savedMissed ? "#4dd0e1" : "rgba(255,255,255,0.4)";
      ctx.lineWidth = savedMissed ? 2 : 1;
      ctx.setLineDash(savedMissed ? [] : [6, 4]);
      rect(c.box);
    }
    ctx.setLineDash([]);
    ctx.strokeStyle = "#ffd54a";
    ctx.lineWidth = 2;
    rect(item.box);
    const missed = state.drag || state.missed;
    if (missed) {
      ctx.strokeStyle = "#4dd0e1";
      ctx.lineWidth = 2;
      rect(missed);
    }
    drawZoom(item.box);
  }

  function drawZoom(box) {
    const ctx = zoom.getContext("2d");
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, zoom.width, zoom.height);
    const side = Math.max(box.width, box.height) * 1.6;
    const cx = box.x + box.width / 2, cy = box.y + box.height / 2;
    const sx = cx - side / 2, sy = cy - side / 2;
    ctx.drawImage(state.bitmap, sx, sy, side, side, 0, 0, zoom.width, zoom.height);
    const k = zoom.width / side;
    ctx.strokeStyle = "#ffd54a";
    ctx.lineWidth = 2;
    ctx.strokeRect((box.x - sx) * k, (box.y - sy) * k, box.width * k, box.height * k);
  }

  function remember(text) {
    const li = document.createElement("li");
    li.textContent = text;
    $("history").prepend(li);
  }

  function describe(receipt, what, note, item) {
    let text = what + " " + (item ? where(item) : "candidate " + receipt.candidate_id.slice(0, 12) + "…");
    if (note) text += " — note: " + note;
    if (receipt.replayed) text += " (already recorded)";
    return text;
  }

  async function submit(verdict) {
    const item = state.items[state.index];
    if (!item || state.drawn !== item) return; // only the item drawn on screen gets a verdict
    const note = $("note").value;
    const settling = state.mode === "adjudicate";
    setBusy(true);
    try {
      const receipt = await api(settling ? "/api/adjudicate" : "/api/verdict", {
        candidate_id: item.candidate_id, request_id: item.request_id, verdict: verdict, note: note,
        key: item.keys[verdict],
      });
      if (receipt.conflict) {
        say("Someone else had labeled this candidate meanwhile (" + receipt.label_before +
          "). Your verdict is recorded as well, and both are flagged as a conflict to adjudicate.", "info");
      } else {
        say("");
      }
      tell(receipt.notices);
      if (!receipt.replayed) {
        const what = (settling ? "Settled as " : "") + (verdict === "confirm" ?
          (settling ? "a finding:" : "Confirmed") : (settling ? "no finding:" : "Dismissed"));
        remember(describe(receipt, what, note, item));
        // an adjudication is final: there is nothing to undo
        state.last = settling ? null : { kind: "verdict", item: item, eventId: receipt.event_id, key: newKey() };
        $("undo").disabled = settling;
      }
      if (state.items[state.index] === item && !item.done) {
        item.done = true;
        state.index += 1;
        await show();
      }
    } catch (err) {
      say(err.message);
    } finally {
      setBusy(false);
      refreshProgress();
    }
  }

  async function undo() {
    // the last action of this sitting, whatever it was; its item is shown again while undoing
    const last = state.last;
    if (!last) return;
    setBusy(true);
    try {
      const at = state.items.indexOf(last.item);
      if (at >= 0 && at !== state.index) {
        state.index = at;
        await show();
      }
      if (last.kind === "skip") {
        remember("Undid the skip of " + where(last.item));
        say("Back at the item you skipped.", "info");
      } else {
        const receipt = await api("/api/retract", { event_id: last.eventId, key: last.key });
        const what = last.kind === "missed" ? "the missed finding" : "the verdict";
        remember(describe(receipt, "Took back " + what + " on", "", last.item));
        say("Undone: " + what + " is retracted (the history keeps both); the candidate is as it was before.", "info");
        last.item.keys = { confirm: newKey(), dismiss: newKey() };
        last.item.done = false;
        if (state.items[state.index] === last.item) await show(); // as it is now: label, boxes
      }
      state.last = null;
      $("undo").disabled = true;
    } catch (err) {
      say(err.message);
    } finally {
      setBusy(false);
      refreshProgress();
    }
  }

  function skip() {
    const item = state.items[state.index];
    if (!item) return;
    if (state.mode === "queue") {
      // given back at once: another reviewer's queue may offer it (undo still shows it here)
      api("/api/skip", { candidate_id: item.candidate_id }).catch((err) => say(err.message));
    }
    remember("Skipped " + where(item));
    state.last = { kind: "skip", item: item };
    $("undo").disabled = false;
    state.index += 1;
    show();
  }

  function setBusy(busy) {
    for (const id of ["confirm", "dismiss", "skip"]) $(id).disabled = busy;
  }

  function toImage(event) {
    const rect = canvas.getBoundingClientRect();
    const w = state.image.width, h = state.image.height;
    const x = (event.clientX - rect.left) * (w / rect.width);
    const y = (event.clientY - rect.top) * (h / rect.height);
    return { x: Math.min(Math.max(x, 0), w), y: Math.min(Math.max(y, 0), h) };
  }

  function startDrawing() {
    state.drawing = !state.drawing;
    canvas.classList.toggle("drawing", state.drawing);
    drawButton(state.drawing ? "Cancel drawing" : "Mark missed finding");
    if (!state.drawing) {
      state.missed = null;
      $("save-missed").disabled = true;
      draw();
    } else if (state.image && state.image.volume) {
      const volume = state.image.volume;
      $("save-missed").textContent = "Save point";
      say("Click the missed clot on one of the three planes (or move the cross with the arrow " +
        "keys), then save it (Enter): a point within " + volume.missed_reach_mm + " mm of this " +
        "candidate, the dashed circles (the archived block ends beyond). Farther away: send it " +
        "to the CAD as a candidate of its own.", "info");
      if (state.view && state.view.offset !== 0) { // a point is read on the candidate's planes
        state.view.offset = 0;
        refreshPlanes();
      }
      draw();
    } else {
      say("Drag a box around the finding the model missed, or place it with the arrow keys " +
        "(Shift+arrows: size), then save it (Enter).", "info");
    }
  }

  // Marking a missed finding by keyboard: arrows move the box (a held arrow keeps moving it),
  // Shift+arrows resize it, Enter saves, Escape cancels.
  function drawingKey(event) {
    const steps = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
    if (event.key === "Escape") {
      stopDrawing();
      draw();
      say("");
      return true;
    }
    if (event.key === "Enter") {
      if (state.missed) saveMissed();
      return true;
    }
    const step = steps[event.key];
    if (!step) return false;
    const image = state.image;
    if (!state.missed && image.volume) { // a point, starting at the candidate
      const c = image.volume.panel / 2;
      state.missed = { x: c - 1, y: c - 1, width: 2, height: 2 };
      state.missedKey = newKey();
    }
    if (!state.missed) {
      const side = Math.max(4, Math.round(Math.min(image.width, image.height) / 8));
      state.missed = {
        x: Math.round((image.width - side) / 2), y: Math.round((image.height - side) / 2),
        width: side, height: side,
      };
      state.missedKey = newKey();
    }
    const b = state.missed;
    if (event.shiftKey && !image.volume) {
      b.width = Math.min(image.width - b.x, Math.max(2, b.width + step[0]));
      b.height = Math.min(image.height - b.y, Math.max(2, b.height + step[1]));
    } else {
      b.x = Math.min(image.width - b.width, Math.max(0, b.x + step[0]));
      b.y = Math.min(image.height - b.height, Math.max(0, b.y + step[1]));
    }
    $("save-missed").disabled = false;
    draw();
    return true;
  }

  function drawButton(words) {
    // the words and the key that does the same: M toggles drawing either way
    const key = document.createElement("kbd");
    key.textContent = "M";
    $("draw").replaceChildren(words + " ", key);
  }

  function stopDrawing() {
    state.drawing = false;
    state.drag = null;
    state.missed = null;
    canvas.classList.remove("drawing");
    drawButton("Mark missed finding");
    $("save-missed").disabled = true;
    $("save-missed").textContent = "Save box";
  }

  canvas.addEventListener("mousedown", (event) => {
    if (!state.drawing) return;
    const p = toImage(event);
    if (state.image && state.image.volume) { // a point on a plane, not a box on the mosaic
      state.missed = { x: p.x - 1, y: p.y - 1, width: 2, height: 2 };
      state.missedKey = newKey();
      $("save-missed").disabled = false;
      draw();
      return;
    }
    state.drag = { x: p.x, y: p.y, width: 0, height: 0, x0: p.x, y0: p.y };
  });
  canvas.addEventListener("mousemove", (event) => {
    if (!state.drag) return;
    const p = toImage(event);
    const d = state.drag;
    d.x = Math.min(d.x0, p.x); d.y = Math.min(d.y0, p.y);
    d.width = Math.abs(p.x - d.x0); d.height = Math.abs(p.y - d.y0);
    draw();
  });
  window.addEventListener("mouseup", () => {
    if (!state.drag) return;
    const d = state.drag;
    state.drag = null;
    if (d.width >= 2 && d.height >= 2) {
      state.missed = { x: d.x, y: d.y, width: d.width, height: d.height };
      state.missedKey = newKey();
      $("save-missed").disabled = false;
    }
    draw();
  });

  async function saveMissed() {
    const item = state.items[state.index];
    if (!item || !state.missed) return;
    const note = $("note").value;
    const box = state.missed;
    try {
      const receipt = await api("/api/missed", {
        request_id: item.request_id, box: box, note: note, key: state.missedKey,
      });
      remember(describe(receipt, "Marked a missed finding near", note, item));
      say("Missed finding saved.", "info");
      if (!receipt.replayed) {
        state.last = { kind: "missed", item: item, eventId: receipt.event_id, key: newKey() };
        $("undo").disabled = false;
      }
      stopDrawing();
      await show();
    } catch (err) {
      say(err.message);
    } finally {
      refreshProgress();
    }
  }

  window.addEventListener("resize", () => draw());
  $("load").addEventListener("click", loadQueue);
  $("disputes").addEventListener("click", loadDisputes);
  $("confirm").addEventListener("click", () => submit("confirm"));
  $("dismiss").addEventListener("click", () => submit("dismiss"));
  $("undo").addEventListener("click", undo);
  $("skip").addEventListener("click", skip);
  $("draw").addEventListener("click", startDrawing);
  $("save-missed").addEventListener("click", saveMissed);
  $("window-preset").addEventListener("change", () => {
    const value = $("window-preset").value;
    if (value === "custom") return;
    const [center, width] = value.split(",").map(Number);
    $("window-center").value = center;
    $("window-width").value = width;
    applyWindow();
  });
  $("window-apply").addEventListener("click", applyWindow);
  $("scroll-back").addEventListener("click", () => scroll(-1));
  $("scroll-on").addEventListener("click", () => scroll(1));
  canvas.addEventListener("wheel", (event) => {
    if (!state.view) return;
    event.preventDefault();
    scroll(event.deltaY > 0 ? 1 : -1);
  }, { passive: false });
  document.addEventListener("keydown", (event) => {
    const tag = event.target.tagName;
    if (tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT") return;
    if (event.ctrlKey || event.metaKey || event.altKey || $("work").hidden) return;
    if (state.drawing && state.drawn && drawingKey(event)) {
      event.preventDefault();
      return;
    }
    // a held key repeats, and a second press can land on an item that appeared a moment ago:
    // keys count only once the item has been on screen for KEY_GUARD_MS
    if (event.repeat || !state.drawn || performance.now() < state.keysFrom) return;
    const actions = {
      c: () => submit("confirm"), d: () => submit("dismiss"), u: undo, s: skip,
      m: () => { if (state.mode === "queue") startDrawing(); },
      "[": () => scroll(-1), "]": () => scroll(1),
    };
    const action = actions[event.key.toLowerCase()];
    if (action) {
      event.preventDefault();
      action();
    }
  });

  window.cadReview = { submit: submit, state: state, loadQueue: loadQueue, loadDisputes: loadDisputes };
  refreshProgress();
})();
