// Equipment health pages (dashboards/health.py): board, alarms and history charts.
// Plain JS, no libraries (the dashboard works offline): pages poll the JSON API
// and redraw themselves; charts are inline SVG built from /api/telemetry.
"use strict";

(function () {
  const root = document.getElementById("health");
  if (!root) return;
  const CSRF = root.dataset.csrf;
  const PAGE = root.dataset.page;

  // ------------------------------------------------------------ helpers
  const esc = s => String(s ?? "").replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
  // Units and names beside a value, device statuses and kinds: static/i18n.js.
  const {metric: UNITS, status: STATUS, kind: KINDS} = campusTerms;
  const KEY_METRICS = {environment: ["co2_ppm", "temperature_c", "humidity_pct"], projector: ["power", "lamp_hours"],
                       display: ["power", "input"], camera: ["people_count"], card_reader: []};

  function ago(ts, now) {
    if (!ts) return _("never");
    const s = Math.max(0, (now || Date.now() / 1000) - ts);
    if (s < 3) return _("just now");
    if (s < 90) return _("%(n)s s ago", {n: Math.round(s)});
    if (s < 5400) return _("%(n)s min ago", {n: Math.round(s / 60)});
    if (s < 48 * 3600) return _("%(n)s h ago", {n: Math.round(s / 3600)});
    return campusTime.date(ts);
  }
  // The site's zone and a 24-hour clock (static/i18n.js); the date only when it is not today there.
  function clock(ts) {
    if (!ts) return "";
    const today = campusTime.dayKey(ts) === campusTime.dayKey(Date.now() / 1000);
    return today ? campusTime.clock(ts) : campusTime.dateTime(ts, true);
  }
  function duration(s) {
    if (s < 90) return _("%(n)s s", {n: Math.round(s)});
    if (s < 5400) return _("%(n)s min", {n: Math.round(s / 60)});
    return _("%(n)s h", {n: (s / 3600).toFixed(1)});
  }
  function fmt(v) { return typeof v === "number" ? String(Math.round(v * 10) / 10) : String(v); }
  async function fetchOk(url) {
    const r = await fetch(url, {headers: {Accept: "application/json"}, credentials: "same-origin"});
    if (r.status === 401) { location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search); throw new Error(_("login required")); }
    if (!r.ok) throw new Error((await r.json().catch(() => ({}))).error || `HTTP ${r.status}`);
    return r;
  }
  async function getJSON(url) { return (await fetchOk(url)).json(); }
  // A page of a server-side list (central/lists.py) and the whole list's length (X-Total-Count).
  async function getPage(url) {
    const r = await fetchOk(url);
    return {rows: await r.json(), total: +(r.headers.get("X-Total-Count") || 0)};
  }
  const ALARM_PAGE = 100;
  function setUpdated(text, bad) {
    const el = document.getElementById("updated");
    if (el) { el.textContent = text; el.classList.toggle("error", !!bad); }
  }
  function setAlarmCount(n) {
    const el = document.getElementById("alarm-count");
    if (!el) return;
    el.hidden = !n;
    el.textContent = n;
    el.title = _("Unacknowledged alarms: %(n)s", {n});
  }
  // Redraw only when the data changed: no flicker, and buttons stay put under the pointer.
  const drawn = {};
  function render(id, html) {
    if (drawn[id] === html) return;
    drawn[id] = html;
    document.getElementById(id).innerHTML = html;
  }
  function poll(fn, ms) {
    let timer = null;
    const run = async () => { clearTimeout(timer); try { await fn(); } finally { timer = setTimeout(run, ms); } };
    run();
    return run;
  }

  // ------------------------------------------------------------ board
  function boardPage() {
    const form = document.getElementById("filters");
    const school = form.elements.school, building = form.elements.building;
    function syncBuildings() {
      for (const opt of building.options) {
        opt.hidden = !!(opt.value && school.value && opt.dataset.school !== school.value);
      }
      if (building.selectedOptions[0]?.hidden) building.value = "";
    }
    function query() {
      const p = new URLSearchParams();
      for (const el of form.elements) if (el.name && el.value) p.set(el.name, el.value);
      return p.toString();
    }
    function metric(k, v) {
      const bad = (k.startsWith("error_") && v !== "ok" && v !== 0);
      const unit = UNITS[k] ?? (k.startsWith("error_") ? k.slice(6) : k);
      const shown = fmt(campusTerms.shown(k, v));
      return `<span class="metric${bad ? " bad" : ""}" data-metric="${esc(k)}"><b>${esc(shown)}</b> ${esc(unit)}</span>`;
    }
    function device(d, now) {
      const keys = (KEY_METRICS[d.kind] || Object.keys(d.latest).slice(0, 3)).filter(k => k in d.latest);
      const errors = Object.keys(d.latest).filter(k => k.startsWith("error_") && d.latest[k] !== "ok" && d.latest[k] !== 0);
      const vals = [...keys, ...errors].map(k => metric(k, d.latest[k])).join("");
      const status = d.status === "never reported" ? "offline" : d.status === "not installed yet" ? "uninstalled" : d.status;
      // Why it is in fault or offline, as its gateway wrote it, already in the page's language (/api/board).
      const why = d.detail ? `<div class="small muted device-detail">${esc(d.detail)}</div>` : "";
      const kind = d.kind && d.kind !== d.id ? `<small class="muted">${esc(KINDS[d.kind] || d.kind.replace("_", " "))}</small>` : "";
      return `<tr data-device="${esc(d.id)}"><td class="dev">${esc(d.id)}${kind}</td>
        <td><span class="badge ${esc(status)}">${esc(STATUS[d.status] || d.status)}</span>${why}</td><td>${vals}</td>
        <td class="seen muted" title="${esc(_("last value %(time)s", {time: clock(d.last_seen)}))}">${esc(d.last_seen ? ago(d.last_seen, now) : _("no value yet"))}</td></tr>`;
    }
    // receipt - ts of the gateway's heartbeats (central/ledger.py): negative when its clock runs ahead.
    function clockWarning(offset) {
      const min = Math.round(Math.abs(offset) / 60);
      const size = min >= 120 ? _("%(n)s h", {n: Math.round(min / 60)}) : _("%(n)s min", {n: min});
      return offset < 0 ? _("Gateway clock is %(size)s ahead: its times are wrong (check NTP on the gateway)", {size})
        : _("Gateway clock is %(size)s behind: its times are wrong (check NTP on the gateway)", {size});
    }
    // Rows the gateway keeps until central acknowledges them (central/acks.py): a few minutes' worth is normal.
    function waitingText(n, age) {
      return age != null ? _("%(n)s messages waiting for central, oldest %(age)s", {n, age: duration(age)})
        : _("%(n)s messages waiting for central", {n});
    }
    function room(r, now) {
      const cls = r.problems.includes("alarm") && r.alarms.every(a => a.state === "acknowledged") ? "p-acked"
        : r.problems.length ? "p-" + r.problems[r.problems.length - 1] : "";
      const alarms = r.alarms.map(a => `<li class="${a.state === "acknowledged" ? "acked" : ""}">⚠ ${esc(a.device ? a.device + ": " : "")}${esc(a.message)}${
        a.state === "acknowledged" ? ` <span class="muted">${esc(_("(acknowledged by %(user)s)", {user: a.acked_by}))}</span>` : ""}</li>`).join("");
      const gw = r.installed ? _("last seen %(ago)s", {ago: ago(r.last_seen, now)}) : _("registered; the gateway has not sent anything yet");
      const presence = r.online ? ["ok", _("online")] : r.installed ? ["offline", _("offline")] : ["uninstalled", _("not installed yet")];
      const skew = r.clock_wrong ? `<p class="clockwarn" data-clock-offset="${esc(r.clock_offset)}">⚠ ${esc(clockWarning(r.clock_offset))}</p>` : "";
      const notes = (r.notes || []).map(n => `<li class="${esc(n.level)}">${esc(n.text)}</li>`).join("");
      const held = r.waiting ? `<p class="${r.waiting_long ? "clockwarn" : "muted"} waiting" data-waiting="${esc(r.waiting)}">${
        r.waiting_long ? "⚠ " : ""}${esc(waitingText(r.waiting, r.waiting_age))}${r.waiting_long ? " " + esc(_("(is ingest running?)")) : ""}</p>` : "";
      return `<section class="card hroom ${cls}${r.installed ? "" : " not-installed"}" data-gateway="${esc(r.gateway)}">
        <header><h2><a href="/health/rooms/${encodeURIComponent(r.gateway)}">${esc(_("Room %(room)s", {room: r.room || "?"}))}</a></h2>
          <span class="badge ${presence[0]}">${esc(presence[1])}</span>
          <a class="hlink" href="/health/rooms/${encodeURIComponent(r.gateway)}">${esc(_("history →"))}</a></header>
        <p class="muted">${r.building ? esc(_("Building %(building)s", {building: r.building})) + " · " : ""}${esc(r.school)} · ${esc(_("gateway %(id)s", {id: r.gateway}))} · ${esc(gw)}</p>
        ${skew}${held}${notes ? `<ul class="hnotes">${notes}</ul>` : ""}
        ${alarms ? `<ul class="halarms">${alarms}</ul>` : ""}
        <table class="hdevs"><thead><tr><th>${esc(_("Device"))}</th><th>${esc(_("Status"))}</th><th>${esc(_("Now"))}</th><th class="seen">${esc(_("Last seen"))}</th></tr></thead><tbody>${r.devices.map(d => device(d, now)).join("") || `<tr><td class="muted">${esc(_("No devices."))}</td></tr>`}</tbody></table>
      </section>`;
    }
    async function refresh() {
      try {
        const data = await getJSON("/api/board?" + query());
        const c = data.counts;
        const chip = (p, n, label, cls) => `<a class="hchip ${n ? cls : "good"}" href="?problem=${p}" data-problem="${p}">${esc(label)}: <b>${n}</b></a>`;
        render("summary", `<span class="hchip">${esc(_("Rooms"))}: <b>${c.rooms}</b></span>` +
          chip("alarm", c.alarm, _("Open alarms"), "bad") + chip("offline", c.offline, _("Offline"), "warn") + chip("fault", c.fault, _("Device faults"), "bad") +
          (c.not_installed ? `<span class="hchip" id="not-installed">${esc(_("Not installed yet"))}: <b>${c.not_installed}</b></span>` : ""));
        render("rooms", data.rooms.map(r => room(r, data.now)).join("") ||
          `<p class="card">${esc(form.elements.problem.value ? _("No room matches these filters — no problems of this kind right now.")
                                                                : _("No room matches these filters."))}</p>`);
        // A page of the rooms, problems first (central/lists.py); the others a click away.
        const last = Math.min(data.offset + data.limit, data.total);
        render("pager", data.total > data.limit || data.offset ? `<span class="muted" data-total="${data.total}">${
          data.total ? esc(_("%(first)s–%(last)s of %(total)s rooms", {first: data.offset + 1, last, total: data.total})) : ""}</span>` +
          (data.offset > 0 ? ` <button type="button" data-offset="${Math.max(0, data.offset - data.limit)}">${esc(_("← Previous"))}</button>` : "") +
          (last < data.total ? ` <button type="button" data-offset="${last}">${esc(_("Next →"))}</button>` : "") : "");
        setAlarmCount(c.unacked);
        setUpdated(_("Updated %(time)s · refreshes every %(n)s s", {time: clock(Date.now() / 1000), n: 5}));
      } catch (e) { setUpdated(_("Cannot reach the server: %(error)s", {error: e.message}), true); }
    }
    const now = poll(refresh, 5000);
    document.getElementById("pager").addEventListener("click", ev => {
      const b = ev.target.closest("button[data-offset]");
      if (!b) return;
      form.elements.offset.value = b.dataset.offset === "0" ? "" : b.dataset.offset;
      history.replaceState(null, "", "?" + query());
      now();
    });
    form.addEventListener("change", ev => {
      if (ev.target !== form.elements.offset) form.elements.offset.value = "";  // a new filter: its first page
      syncBuildings();
      history.replaceState(null, "", "?" + query());
      now();
    });
    document.getElementById("summary").addEventListener("click", ev => {
      const a = ev.target.closest("a[data-problem]");
      if (!a) return;
      ev.preventDefault();
      form.elements.problem.value = form.elements.problem.value === a.dataset.problem ? "" : a.dataset.problem;
      form.dispatchEvent(new Event("change"));
    });
    syncBuildings();
  }
  // Open alarms nobody acknowledged: counted by the server, one row fetched (not every open alarm).
  async function unacked() {
    return (await getPage("/api/alarms?state=active&limit=1")).total;
  }

  // ------------------------------------------------------------ alarms
  function alarmsPage() {
    const place = a => `<a href="/health/rooms/${encodeURIComponent(a.gateway)}">${esc(_("Room %(room)s", {room: a.room || a.gateway}))}</a>` +
      (a.building ? `<div class="muted">${esc(_("Building %(building)s", {building: a.building}))}</div>` : "");
    const what = a => `<b>${esc(a.label)}</b><div>${esc(a.message)}</div>`;
    function openRow(a) {
      const state = a.acknowledged
        ? `<span class="hstate acknowledged">${esc(_("Acknowledged by %(user)s", {user: a.acked_by}))}</span><div class="muted">${esc(clock(a.acked_at))}</div>`
        : `<span class="hstate active">${esc(_("New — needs attention"))}</span>`;
      const button = a.acknowledged ? "" :
        `<form method="post" action="/health/alarms/${a.id}/ack" data-ack="${a.id}"><input type="hidden" name="csrf" value="${esc(CSRF)}">
         <button type="submit" class="hack">${esc(_("Acknowledge"))}</button></form>`;
      return `<tr class="${a.acknowledged ? "is-acked" : "is-new"}" data-alarm="${a.id}" data-kind="${esc(a.kind)}" data-gateway="${esc(a.gateway)}">
        <td>${esc(clock(a.raised_at))}<div class="muted">${esc(ago(a.raised_at))}</div></td><td>${place(a)}</td>
        <td>${esc(a.device || _("gateway"))}</td><td>${what(a)}</td><td>${esc(a.value)}</td><td>${state}</td><td>${button}</td></tr>`;
    }
    function historyRow(a) {
      const acked = a.acknowledged ? `${esc(_("by %(user)s", {user: a.acked_by}))}<div class="muted">${esc(clock(a.acked_at))}</div>`
        : `<form method="post" action="/health/alarms/${a.id}/ack" data-ack="${a.id}"><input type="hidden" name="csrf" value="${esc(CSRF)}">
           <button type="submit">${esc(_("Acknowledge"))}</button></form>`;
      return `<tr data-alarm="${a.id}"><td>${esc(clock(a.raised_at))}</td><td>${place(a)}</td><td>${esc(a.device || _("gateway"))}</td>
        <td>${what(a)}</td><td>${esc(a.value)}</td><td>${acked}</td><td>${esc(clock(a.cleared_at))}</td>
        <td>${esc(duration(a.cleared_at - a.raised_at))}</td></tr>`;
    }
    let offset = 0;  // of the open alarms' page shown
    async function refresh() {
      try {
        const [open, past, n] = await Promise.all([getPage(`/api/alarms?state=open&limit=${ALARM_PAGE}&offset=${offset}`),
          getJSON("/api/alarms?state=history&limit=100"), unacked()]);
        if (offset && !open.rows.length && open.total) { offset = 0; return refresh(); }  // the page emptied
        render("open-alarms-body", open.rows.map(openRow).join("") ||
          `<tr><td colspan="7" class="hstate cleared">${esc(_("No open alarms: everything is within its limits."))}</td></tr>`);
        render("history-alarms-body", past.map(historyRow).join("") || `<tr><td colspan="8" class="muted">${esc(_("No cleared alarms yet."))}</td></tr>`);
        const last = Math.min(offset + ALARM_PAGE, open.total);
        render("open-pager", open.total > ALARM_PAGE || offset ? `<span class="muted" data-total="${open.total}">${esc(_("%(first)s–%(last)s of %(total)s", {first: offset + 1, last, total: open.total}))}</span>` +
          (offset > 0 ? ` <button type="button" data-offset="${Math.max(0, offset - ALARM_PAGE)}">${esc(_("← Previous"))}</button>` : "") +
          (last < open.total ? ` <button type="button" data-offset="${last}">${esc(_("Next →"))}</button>` : "") : "");
        setAlarmCount(n);
        document.getElementById("open-note").textContent = _("(%(open)s open, %(n)s not acknowledged)", {open: open.total, n});
        setUpdated(_("Updated %(time)s · refreshes every %(n)s s", {time: clock(Date.now() / 1000), n: 3}));
      } catch (e) { setUpdated(_("Cannot reach the server: %(error)s", {error: e.message}), true); }
    }
    document.querySelector("#open-alarms tbody").id = "open-alarms-body";
    document.querySelector("#history-alarms tbody").id = "history-alarms-body";
    const now = poll(refresh, 3000);
    document.getElementById("open-pager").addEventListener("click", ev => {
      const b = ev.target.closest("button[data-offset]");
      if (!b) return;
      offset = +b.dataset.offset;
      now();
    });
    root.addEventListener("submit", async ev => {
      const form = ev.target.closest("form[data-ack]");
      if (!form) return;
      ev.preventDefault();
      const button = form.querySelector("button");
      button.disabled = true;
      button.textContent = _("Acknowledging…");
      try {
        const r = await fetch(`/api/alarms/${form.dataset.ack}/ack`, {method: "POST", credentials: "same-origin",
          headers: {"X-CSRF-Token": CSRF, Accept: "application/json"}});
        if (!r.ok) throw new Error((await r.json().catch(() => ({}))).error || `HTTP ${r.status}`);
      } catch (e) {
        setUpdated(_("Could not acknowledge: %(error)s", {error: e.message}), true);
        button.disabled = false;
        button.textContent = _("Acknowledge");
        return;
      }
      now();
    });
  }

  // ------------------------------------------------------------ charts
  // Two points per pixel column at most: /api/telemetry downsamples a longer window to the newest
  // sample of each step (and says so), and its newest point is always in the answer.
  const MAX_POINTS = 1200;

  async function fetchSeries(gateway, s, start, end) {
    const q = new URLSearchParams({gateway, device: s.device, metric: s.metric, start, end, limit: MAX_POINTS});
    return getJSON("/api/telemetry?" + q);
  }
  async function pool(tasks, n) {
    const results = new Array(tasks.length);
    let next = 0;
    await Promise.all(Array.from({length: Math.min(n, tasks.length)}, async () => {
      while (next < tasks.length) { const i = next++; results[i] = await tasks[i](); }
    }));
    return results;
  }
  const W = 640, ML = 48, MR = 12, MT = 10;
  const svgNS = (h, body) => `<svg viewBox="0 0 ${W} ${h}" role="img" preserveAspectRatio="xMidYMid meet">${body}</svg>`;
  function timeTicks(start, end) {
    const steps = [300, 600, 900, 1800, 3600, 2 * 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400];
    const step = steps.find(s => (end - start) / s <= 8) || 86400;
    // Ticks on the site's whole hours and days: its UTC offset at the window's start (static/i18n.js).
    const offset = -campusTime.utcOffset(start);
    const out = [];
    for (let t = Math.ceil((start - offset) / step) * step + offset; t <= end; t += step) out.push(t);
    return {ticks: out, day: step >= 86400};
  }
  function xAxis(start, end, x, y0) {
    const {ticks, day} = timeTicks(start, end);
    return ticks.map(t => {
      const label = day ? campusTime.date(t).slice(5) : campusTime.clock(t, false);
      return `<line class="grid" x1="${x(t)}" x2="${x(t)}" y1="${MT}" y2="${y0}"/><text x="${x(t)}" y="${y0 + 14}" text-anchor="middle">${esc(label)}</text>`;
    }).join("");
  }
  function niceTicks(lo, hi) {
    const span = hi - lo, raw = span / 4, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map(m => m * mag).find(s => span / s <= 5);
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) out.push(Math.round(v * 1e6) / 1e6);
    return out;
  }
  function lineChart(points, s, start, end) {
    const H = 170, MB = 22, y0 = H - MB;
    const nums = points.filter(p => typeof p[1] === "number");
    if (!nums.length) return `<p class="muted">${esc(_("No data in this window."))}</p>`;
    let lo = Math.min(...nums.map(p => p[1]), ...s.limits.map(l => l.value));
    let hi = Math.max(...nums.map(p => p[1]), ...s.limits.map(l => l.value));
    if (hi - lo < 1e-6) { lo -= 1; hi += 1; }
    const pad = (hi - lo) * 0.08;
    lo -= pad; hi += pad;
    const x = t => (ML + (t - start) / (end - start) * (W - ML - MR)).toFixed(1);
    const y = v => (MT + (hi - v) / (hi - lo) * (y0 - MT)).toFixed(1);
    // One min and one max per pixel column; a break where samples are missing.
    const cols = new Map();
    for (const [t, v] of nums) {
      const c = Math.round((t - start) / (end - start) * (W - ML - MR));
      const e = cols.get(c);
      if (!e) cols.set(c, {t, min: [t, v], max: [t, v], last: t});
      else { if (v < e.min[1]) e.min = [t, v]; if (v > e.max[1]) e.max = [t, v]; e.last = t; }
    }
    const gapLimit = Math.max(300, (end - start) / 60);
    let d = "", prev = null;
    for (const e of [...cols.values()].sort((a, b) => a.t - b.t)) {
      const pair = e.min[0] <= e.max[0] ? [e.min, e.max] : [e.max, e.min];
      for (const [t, v] of pair) {
        d += `${prev === null || t - prev > gapLimit ? "M" : "L"}${x(t)},${y(v)}`;
        prev = t;
      }
      prev = e.last;
    }
    const yt = niceTicks(lo, hi).map(v => `<line class="grid" x1="${ML}" x2="${W - MR}" y1="${y(v)}" y2="${y(v)}"/>` +
      `<text x="${ML - 6}" y="${+y(v) + 4}" text-anchor="end">${v}</text>`).join("");
    const limits = s.limits.map(l => `<line class="limit" x1="${ML}" x2="${W - MR}" y1="${y(l.value)}" y2="${y(l.value)}"/>` +
      `<text x="${W - MR - 4}" y="${+y(l.value) - 4}" text-anchor="end" class="limit-label">${esc(l.label)} ${l.value}</text>`).join("");
    return svgNS(H, `${yt}${xAxis(start, end, x, y0)}${limits}<path class="line" d="${d}"/>`);
  }
  function stateChart(points, start, end, maxGap) {
    const H = 56, y0 = 30;
    if (!points.length) return `<p class="muted">${esc(_("No data in this window."))}</p>`;
    const x = t => ML + (Math.max(start, Math.min(end, t)) - start) / (end - start) * (W - ML - MR);
    const cls = v => (v === "on" || v === 1) ? "s-on" : (v === "warming" || v === "cooling" || v === 2 || v === 3) ? "s-warm" : "s-off";
    // Each sample's state lasts until the next one (at most maxGap): runs of one state become one bar.
    // A bar per sample was 0.01 px wide on a week of 10 s samples, and so many were never drawn.
    const runs = [];
    let onSeconds = 0;
    for (let i = 0; i < points.length; i++) {
      const [t, v] = points[i];
      const stop = Math.min(i + 1 < points.length ? points[i + 1][0] : Math.min(end, Date.now() / 1000), t + maxGap);
      const a = Math.max(t, start), b = Math.min(stop, end);
      if (b <= a) continue;
      const c = cls(v), prev = runs[runs.length - 1];
      if (c === "s-on") onSeconds += b - a;
      if (prev && prev.c === c && a <= prev.b) prev.b = Math.max(prev.b, b);
      else runs.push({c, a, b});
    }
    const body = runs.map(r => {
      const x1 = x(r.a), x2 = x(r.b);
      return `<rect class="${r.c}" x="${x1.toFixed(2)}" y="${MT}" width="${Math.max(0.5, x2 - x1).toFixed(2)}" height="${y0 - MT}"/>`;
    }).join("");
    return {svg: svgNS(H, body + xAxis(start, end, t => x(t).toFixed(1), y0)), onSeconds};
  }
  async function roomPage() {
    const box = document.getElementById("charts");
    const series = JSON.parse(document.getElementById("series").textContent);
    const gateway = box.dataset.gateway, seconds = +box.dataset.seconds, maxGap = +box.dataset.maxGap;
    const groups = [...new Set(series.map(s => s.group))];
    const legend = `<p class="hlegend">${esc(_("State:"))} <i class="s lg-on"></i>${esc(_("on"))} <i class="lg-warm"></i>${
      esc(_("warming / cooling"))} <i class="lg-off"></i>${esc(_("off"))} ${esc(_("(blank: no data)"))}</p>`;
    box.innerHTML = groups.map(g => `<section class="hgroup"><h2>${esc(g)}</h2>${
      series.some(s => s.group === g && s.type === "state") ? legend : ""}<div class="hcharts">${
      series.map((s, i) => s.group !== g ? "" : `<div class="card hchart" id="chart-${i}" data-metric="${esc(s.metric)}" data-device="${esc(s.device)}">
        <h3>${esc(s.label)} <span class="muted">${esc([s.unit, s.device].filter(Boolean).join(" · "))}</span><span class="now"></span></h3>
        <div class="plot"><p class="muted">${esc(_("Loading…"))}</p></div></div>`).join("")}</div></section>`).join("");
    const end = Date.now() / 1000, start = end - seconds;
    await pool(series.map((s, i) => async () => {
      const el = document.getElementById(`chart-${i}`);
      try {
        const got = await fetchSeries(gateway, s, s.type === "state" ? start - maxGap : start, end);
        const pts = got.points;
        el.dataset.step = got.step || 0;
        if (got.downsampled) el.title = _("One point per %(step)s: the newest sample of each", {step: duration(got.step)});
        if (s.type === "state") {
          // A downsampled state holds for its whole step: a step longer than maxGap is no silence.
          const res = stateChart(pts, start, end, Math.max(maxGap, 2 * (got.step || 0)));
          el.querySelector(".plot").innerHTML = typeof res === "string" ? res : res.svg;
          if (typeof res !== "string") el.querySelector(".now").textContent = _("on %(time)s", {time: duration(res.onSeconds)});
        } else {
          el.querySelector(".plot").innerHTML = lineChart(pts, s, start, end);
          const last = pts.filter(p => typeof p[1] === "number").pop();
          if (last) el.querySelector(".now").textContent = `${fmt(last[1])} ${s.unit}`;
        }
      } catch (e) {
        el.querySelector(".plot").innerHTML = `<p class="error">${esc(_("Cannot load: %(error)s", {error: e.message}))}</p>`;
      }
    }), 3);
  }

  // ------------------------------------------------------------ every other page: the alarm count
  async function countOnly() {
    try { setAlarmCount(await unacked()); } catch (e) { /* the count is a nicety */ }
  }

  if (PAGE === "board") boardPage();
  else if (PAGE === "alarms") alarmsPage();
  else {
    if (PAGE === "room") roomPage();
    poll(countOnly, 10000);
  }
})();
