/* The classroom panel (panel.html). Plain JS, no libraries (the school network may be offline).
 *
 * State comes from the server-sent event stream data-stream (`event: room`, one JSON snapshot of the room
 * per change); a dropped stream is reopened by itself. Taps POST to the command API with the page's CSRF
 * token, show "sending…", and then the command's final status, following GET /api/commands/<id> (and the
 * stream) when the API answered 202 before the device did.
 */
(() => {
  "use strict";
  const root = document.getElementById("panel");
  if (!root) return;

  const gateway = root.dataset.gateway;
  const canCommand = root.dataset.canCommand === "true";
  const csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
  const FINAL = new Set(["done", "failed", "rejected", "expired"]);
  const ACTIONS = {power_on: _("Power on"), power_off: _("Power off"), select_input: _("Input"),
                   set_volume: _("Volume"), mute: _("Mute"), unmute: _("Unmute")};
  const POWER = {on: _("On"), off: _("Off"), warming: _("Warming up…"), cooling: _("Cooling down…")};
  const STATUS = {done: _("done"), failed: _("failed"), rejected: _("refused"), expired: _("expired"),
                  pending: _("waiting…")};
  const kindName = (kind) => campusTerms.kind[kind] || kind;  // static/i18n.js
  // A command's detail (the gateway's words) in this page's language: the room stream carries it in each
  // language (`details`), an API answer in the request's (`detail`).
  const detailOf = (c) => (c.details && c.details[campusTime.lang]) || c.detail;
  const FOLLOW_MS = 1000;

  let state = null;               // the last snapshot of the room
  let cardsLoading = false;
  const watching = new Map();     // command id -> {device, what}
  const lastCommand = {};         // device -> id of the command this page sent last
  const holdVolume = {};          // device -> time (ms) until which the slider is the user's, not the stream's

  const $ = (sel, el = root) => el.querySelector(sel);
  const $$ = (sel, el = root) => Array.from(el.querySelectorAll(sel));
  const cardOf = (device) => $$(".pcard").find((c) => c.dataset.device === device) || null;
  const field = (card, name) => card.querySelector(`[data-field="${name}"]`);
  // The site's zone and a 24-hour clock, never the browser's own (static/i18n.js).
  const clock = (ts) => campusTime.clock(ts);

  function inputLabel(card, name) {
    const btn = card && $$('[data-action="select_input"]', card).find((b) => b.dataset.input === name);
    return btn ? btn.textContent.trim() : String(name);
  }

  function describe(device, action, params) {
    const card = cardOf(device);
    const title = card ? card.getAttribute("aria-label") : device;
    let what = ACTIONS[action] || action;
    if (action === "select_input") what = _("Input %(input)s", {input: inputLabel(card, params && params.input)});
    if (action === "set_volume") what = _("Volume %(level)s", {level: params && params.level});
    return {title, what};
  }

  // ---------------------------------------------------------------- state

  function setText(el, text) { if (el && el.textContent !== text) el.textContent = text; }

  function showEnvironment(env) {
    for (const item of $$(".env-item")) {
      const value = env[item.dataset.metric];
      item.hidden = value === undefined || value === null;
      if (item.hidden) continue;
      const shown = item.dataset.metric === "co2_ppm" ? Math.round(value) : Math.round(value * 10) / 10;
      setText(item.querySelector("b"), String(shown));
      if (item.dataset.metric === "co2_ppm") {
        item.classList.toggle("warn", value >= 1000 && value < 1500);
        item.classList.toggle("bad", value >= 1500);
        item.querySelector(".env-hint").hidden = value < 1000;
      }
    }
  }

  function showOffline(snap) {
    const banner = $("#offline");
    banner.hidden = snap.online;
    if (snap.online) return;
    setText(field(banner, "offline-text"), !snap.reported
      ? _("The classroom gateway is not installed yet (it has never reported), so the equipment cannot be controlled from here.")
      : snap.offline_since
        ? _("The classroom gateway stopped reporting at %(time)s, so the equipment cannot be controlled from here.",
            {time: clock(snap.offline_since)})
        : _("The classroom gateway stopped reporting, so the equipment cannot be controlled from here."));
  }

  function showDevice(dev, online) {
    const card = cardOf(dev.id);
    if (!card) return;
    const v = dev.values || {};
    const power = POWER[v.power] ? v.power : "unknown";
    const badge = field(card, "power");
    // While the room is offline what we have is the last thing the gateway said: show it as such.
    card.classList.toggle("stale", !online);
    badge.dataset.power = online ? power : "unknown";
    setText(badge, !online ? (POWER[power] ? _("Last known: %(power)s", {power: POWER[power]}) : _("Unknown"))
      : POWER[power] || (dev.status === "ok" ? _("Unknown") : _("No answer")));
    const isOn = v.power === "on";

    // Input and picture/sound mute mean something only while on (a projector does not even report them).
    setText(field(card, "input"), isOn && v.input !== undefined ? inputLabel(card, v.input) : "—");
    setText(field(card, "muted"), isOn && v.muted !== undefined
      ? (v.muted === "on" ? _("Muted") : (dev.kind === "projector" ? _("Shown") : _("Sound on"))) : "—");
    setText(field(card, "volume"), v.volume !== undefined ? String(v.volume) : "—");
    const slider = card.querySelector('input[data-action="set_volume"]');
    if (slider && v.volume !== undefined && !(holdVolume[dev.id] > Date.now())) {
      slider.value = v.volume;
      setText(field(card, "volume-out"), String(v.volume));
    }

    for (const b of $$('[data-action="select_input"]', card)) {
      b.setAttribute("aria-pressed", String(isOn && b.dataset.input === v.input));
    }
    const mute = card.querySelector('[data-action="mute"]');
    if (mute) mute.setAttribute("aria-pressed", String(isOn && v.muted === "on"));
    const on = card.querySelector('[data-action="power_on"]');
    const off = card.querySelector('[data-action="power_off"]');
    if (on) on.classList.toggle("current", v.power === "on" || v.power === "warming");
    if (off) off.classList.toggle("current", v.power === "off" || v.power === "cooling");

    // One note under the title: why the device cannot do what the teacher expects right now.
    const note = field(card, "note");
    let text = "", cls = "";
    const errors = Object.entries(dev.errors || {});
    if (online && dev.status === "offline") {
      text = _("The %(kind)s does not answer: is it plugged in and switched on at the wall?", {kind: kindName(dev.kind)});
      cls = "bad";
    } else if (online && dev.status === "fault") {
      text = _("The %(kind)s answers with errors; commands may fail. If it persists, call IT.", {kind: kindName(dev.kind)});
      cls = "bad";
    } else if (v.power === "warming") {
      text = _("Warming up: the picture appears in about a minute. Input and mute changes wait until it is ready.");
      cls = "info";
    } else if (v.power === "cooling") {
      text = _("Cooling down: it can be switched on again when this is done."); cls = "info";
    } else if (errors.length) {
      text = _("The %(kind)s reports: %(errors)s. Tell IT.", {
        kind: kindName(dev.kind), errors: errors.map(([k, val]) => `${k} ${val}`).join(", ")});
    }
    note.hidden = !text;
    setText(note, text);
    note.className = "devnote" + (cls ? " " + cls : "");
  }

  function showRecent(commands) {
    const list = $("#recent");
    list.replaceChildren(...(commands.length ? commands.slice(0, 6).map((c) => {
      const li = document.createElement("li");
      const {title, what} = describe(c.device, c.action, c.params);
      const time = document.createElement("time");
      time.textContent = clock(c.created);
      const text = document.createElement("span");
      text.textContent = _("%(device)s: %(action)s", {device: title, action: what});
      const st = document.createElement("span");
      st.className = `st st-${c.status}`;
      st.textContent = STATUS[c.status] || c.status;
      const by = document.createElement("span");
      by.className = "muted";
      by.textContent = (c.status !== "done" && c.status !== "pending" && c.detail ? detailOf(c) + " · " : "") +
        _("by %(user)s", {user: c.by});
      li.append(time, text, st, by);
      return li;
    }) : [Object.assign(document.createElement("li"), {className: "muted", textContent: _("None yet.")})]));
  }

  // What the room did by itself (central/room_actions.py), in the words of dashboards/panel.py why_text.
  const WHY_STATUS = {failed: _("failed"), rejected: _("refused"), expired: _("expired"), pending: _("waiting…"),
                      skipped: _("skipped")};

  function whyText(item, kinds) {
    const names = [];
    for (const dev of item.devices) {
      const name = kinds[dev] ? kindName(kinds[dev]) : dev;
      if (!names.includes(name)) names.push(name);
    }
    const devices = names.length ? names.join(_(", ")) : _("the equipment");
    let text;
    if (item.source === "schedule") {
      if (item.outcome === "missed") {
        text = _("Schedule “%(name)s” was missed: the gateway was not running then", {name: item.name});
      } else if (item.outcome === "interrupted") {
        text = _("Schedule “%(name)s” was interrupted", {name: item.name});
      } else if (item.outcome === "skipped") {
        text = item.reason === "override"
          ? _("Schedule “%(name)s” was not run: a teacher kept the room on for this period", {name: item.name})
          : _("Schedule “%(name)s” was not run (%(reason)s)", {name: item.name, reason: item.reason});
      } else if (item.action === "power_off") {
        text = _("%(devices)s switched off by schedule “%(name)s”", {devices, name: item.name});
      } else if (item.action === "power_on") {
        text = _("%(devices)s switched on by schedule “%(name)s”", {devices, name: item.name});
      } else if (item.action === "mute") {
        text = _("%(devices)s muted by schedule “%(name)s”", {devices, name: item.name});
      } else if (item.action === "unmute") {
        text = _("%(devices)s unmuted by schedule “%(name)s”", {devices, name: item.name});
      } else {
        text = _("Schedule “%(name)s” ran on %(devices)s", {devices, name: item.name});
      }
    } else if (item.source === "podium") {
      text = item.outcome === "started" ? _("Class started with a card at the podium")
        : item.reason === "timeout" ? _("Class ended by itself: nobody swiped a card before the timeout")
        : _("Class ended with a card at the podium");
    } else if (item.rule === "idle_off") {
      text = item.outcome === "interrupted"
        ? _("Switching off an empty room was interrupted: the gateway stopped during it")
        : _("%(devices)s switched off: nobody was in the room", {devices});
    } else {
      // The gateway's reason in this page's language where it marked it (`reasons`, built by the server).
      const reason = (item.reasons && item.reasons[campusTime.lang]) || item.reason;
      text = _("%(devices)s switched by rule “%(rule)s” (%(reason)s)", {devices, rule: item.rule, reason});
    }
    if (item.status !== "done" && !["missed", "interrupted", "skipped"].includes(item.outcome)) {
      text += " " + _("(%(status)s)", {status: WHY_STATUS[item.status] || item.status});
    }
    return text.charAt(0).toUpperCase() + text.slice(1);
  }

  function showWhy(snap) {
    const list = $("#why");
    if (!list) return;
    const kinds = Object.fromEntries(snap.devices.map((d) => [d.id, d.kind]));
    const items = snap.automatic || [];
    list.replaceChildren(...(items.length ? items.map((item) => {
      const li = document.createElement("li");
      li.dataset.source = item.source;
      const time = document.createElement("time");
      time.textContent = campusTime.clock(item.ts, false);
      const text = document.createElement("span");
      text.textContent = whyText(item, kinds);
      li.append(time, " ", text);
      return li;
    }) : [Object.assign(document.createElement("li"), {className: "muted", textContent: _("None yet.")})]));
  }

  function setEnabled(enabled) {
    for (const el of $$(".ctl")) el.disabled = !enabled;
  }

  function sameCards(snap) {
    const want = snap.devices.map((d) => `${d.id}/${d.profile}`).join(",");
    const have = $$(".pcard").map((c) => `${c.dataset.device}/${c.dataset.profile}`).join(",");
    return want === have;
  }

  async function reloadCards() {
    if (cardsLoading) return;
    cardsLoading = true;
    try {
      const resp = await fetch(root.dataset.cards, {credentials: "same-origin"});
      if (resp.ok) {
        $("#devices").innerHTML = await resp.text();
        if (state) apply(state, true);
      }
    } catch (e) {
      /* the stream's next change tries again */
    } finally {
      cardsLoading = false;
    }
  }

  // The current period's register (dashboards/attendance.py): fetched at first, then whenever the stream says
  // a swipe or check-in came (`swiped` changed), and each minute (a period starts or ends without a swipe).
  let swiped;
  async function reloadAttendance() {
    const box = $("#attendance");
    if (!box || !root.dataset.attendance) return;
    try {
      const resp = await fetch(root.dataset.attendance, {credentials: "same-origin"});
      if (resp.ok) box.innerHTML = await resp.text();
    } catch (e) {
      /* the next swipe or minute tries again */
    }
  }
  setInterval(reloadAttendance, 60000);

  function apply(snap, afterReload = false) {
    if (snap.swiped !== swiped) { swiped = snap.swiped; reloadAttendance(); }
    state = snap;
    if (!afterReload && !sameCards(snap)) reloadCards();
    showOffline(snap);
    showEnvironment(snap.environment || {});
    setEnabled(canCommand && snap.online);
    for (const dev of snap.devices) showDevice(dev, snap.online);
    showRecent(snap.commands || []);
    showWhy(snap);
    for (const c of snap.commands || []) {
      if (watching.has(c.id) && FINAL.has(c.status)) finish(c);
    }
  }

  // ---------------------------------------------------------------- commands

  function showResult(device, kind, text, detail = "") {
    const card = cardOf(device);
    const el = card && field(card, "result");
    if (!el) return;
    el.hidden = false;
    el.dataset.state = kind;
    const head = document.createElement("b");
    head.textContent = text;
    el.replaceChildren(head);
    if (detail) el.append(document.createElement("br"), Object.assign(document.createElement("span"), {textContent: detail}));
  }

  function finish(cmd) {
    const info = watching.get(cmd.id) || {device: cmd.device, ...describe(cmd.device, cmd.action, cmd.params)};
    watching.delete(cmd.id);
    for (const b of $$(".ctl.busy")) if (b.dataset.cmd === cmd.id) b.classList.remove("busy");
    if (cmd.action === "set_volume") holdVolume[cmd.device] = Date.now() + 3000;
    if (lastCommand[cmd.device] !== cmd.id) return; // a newer tap owns the message line
    const heads = {
      done: _("✓ %(action)s: done", {action: info.what}),
      failed: _("✗ %(action)s failed", {action: info.what}),
      rejected: _("✗ %(action)s was refused by the %(device)s", {action: info.what, device: cmd.device}),
      expired: _("✗ %(action)s expired: nothing was changed", {action: info.what}),
    };
    const detail = detailOf(cmd) || (cmd.status === "expired" ? _("The classroom gateway did not answer in time.") : "");
    showResult(cmd.device, cmd.status === "done" ? "done" : "failed",
               heads[cmd.status] || `${info.what}: ${STATUS[cmd.status] || cmd.status}`, detail);
  }

  async function follow(id) {
    while (watching.has(id)) {
      await new Promise((r) => setTimeout(r, FOLLOW_MS));
      if (!watching.has(id)) return;
      try {
        const resp = await fetch(`/api/commands/${encodeURIComponent(id)}`, {credentials: "same-origin"});
        if (!resp.ok) continue;
        const cmd = await resp.json();
        if (FINAL.has(cmd.status)) finish(cmd);
      } catch (e) {
        /* the network is down for a moment: keep following */
      }
    }
  }

  async function send(device, action, params, button) {
    const {what} = describe(device, action, params);
    const card = cardOf(device);
    const kind = card ? card.dataset.kind : "device";
    lastCommand[device] = null;
    showResult(device, "sending", _("%(action)s: sending…", {action: what}));
    if (button) button.classList.add("busy");
    const done = () => { if (button) button.classList.remove("busy"); };
    let resp, body;
    try {
      resp = await fetch(`/api/gateways/${encodeURIComponent(gateway)}/devices/${encodeURIComponent(device)}/commands`, {
        method: "POST", credentials: "same-origin",
        headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
        body: JSON.stringify({action, params}),
      });
      body = await resp.json().catch(() => ({}));
    } catch (e) {
      done();
      showResult(device, "failed", _("✗ %(action)s was not sent", {action: what}),
                 _("The server cannot be reached. Check the network and try again."));
      return;
    }
    if (resp.status !== 200 && resp.status !== 202) {
      done();
      const reason = resp.status === 401 ? _("Your session has ended; log in again.")
        : (body.error || _("the server answered %(status)s", {status: resp.status}));
      showResult(device, "failed", _("✗ %(action)s was not sent", {action: what}), reason);
      return;
    }
    lastCommand[device] = body.id;
    if (button) button.dataset.cmd = body.id;
    watching.set(body.id, {device, what});
    if (FINAL.has(body.status)) { finish(body); return; }
    const dev = state && state.devices.find((d) => d.id === device);
    const power = dev && dev.values.power;
    showResult(device, "sending",
      power === "warming" ? _("%(action)s: sent; the %(kind)s will do it when it has finished warming up…",
                              {action: what, kind: kindName(kind)})
      : power === "cooling" ? _("%(action)s: sent; the %(kind)s will do it when it has finished cooling down…",
                                {action: what, kind: kindName(kind)})
      : _("%(action)s: sent, waiting for the %(kind)s to confirm…", {action: what, kind: kindName(kind)}));
    const seen = state && (state.commands || []).find((c) => c.id === body.id && FINAL.has(c.status));
    if (seen) finish(seen); else follow(body.id);
  }

  root.addEventListener("click", (ev) => {
    const button = ev.target.closest("button.ctl[data-action]");
    if (!button || button.disabled || !canCommand) return;
    const card = button.closest(".pcard");
    const params = button.dataset.action === "select_input" ? {input: button.dataset.input} : {};
    send(card.dataset.device, button.dataset.action, params, button);
  });
  // "Keep on for this period": central computes the period's end (central/edge_rules.py) and the gateway keeps
  // the room on until then, offline too.
  const overrideBtn = $("#override-btn");
  if (overrideBtn) overrideBtn.addEventListener("click", async () => {
    const out = $("#override-out");
    overrideBtn.classList.add("busy");
    try {
      const resp = await fetch(overrideBtn.dataset.url, {method: "POST", credentials: "same-origin",
                                                         headers: {"X-CSRF-Token": csrf}});
      const body = await resp.json().catch(() => ({}));
      if (resp.status !== 200 && resp.status !== 202) {
        setText(out, body.error || _("the server answered %(status)s", {status: resp.status}));
      } else if (body.status === "done" || body.status === "pending") {
        setText(out, _("Kept on until %(time)s.", {time: clock(body.until)}));
      } else {
        setText(out, _("✗ not kept on: %(detail)s", {detail: body.detail || STATUS[body.status] || body.status}));
      }
    } catch (e) {
      setText(out, _("The server cannot be reached. Check the network and try again."));
    } finally {
      overrideBtn.classList.remove("busy");
    }
  });
  root.addEventListener("input", (ev) => {
    const slider = ev.target.closest('input[data-action="set_volume"]');
    if (!slider) return;
    const card = slider.closest(".pcard");
    holdVolume[card.dataset.device] = Date.now() + 60000;
    setText(field(card, "volume-out"), slider.value);
  });
  root.addEventListener("change", (ev) => {
    const slider = ev.target.closest('input[data-action="set_volume"]');
    if (!slider || !canCommand) return;
    const card = slider.closest(".pcard");
    holdVolume[card.dataset.device] = Date.now() + 60000;
    send(card.dataset.device, "set_volume", {level: Number(slider.value)}, null);
  });

  // ---------------------------------------------------------------- the stream

  const live = $("#live");
  const conn = $("#conn");
  let source = null, retry = 2000, lostTimer = null;

  function setLive(how) {
    live.dataset.live = how;
    setText(live, {ok: _("Live"), connecting: _("Connecting…"), reconnecting: _("Reconnecting…"),
                   lost: _("Not connected")}[how]);
    if (how === "ok") {
      clearTimeout(lostTimer);
      lostTimer = null;
      conn.hidden = true;
    } else if (!lostTimer) {
      // A blip is normal; say something only when the live view has been gone for a while.
      lostTimer = setTimeout(() => {
        conn.hidden = false;
        setText(conn, _("Lost the live connection to the server; trying again. What you see may be out of date."));
      }, 6000);
    }
  }

  async function sessionEnded() {
    try {
      return (await fetch("/api/gateways", {credentials: "same-origin"})).status === 401;
    } catch (e) {
      return false;
    }
  }

  function connect() {
    source = new EventSource(root.dataset.stream);
    source.addEventListener("open", () => { retry = 2000; setLive("ok"); });
    source.addEventListener("room", (ev) => { setLive("ok"); apply(JSON.parse(ev.data)); });
    source.addEventListener("denied", () => {
      source.close();
      conn.hidden = false;
      setText(conn, _("You may no longer see this room. Reload the page."));
    });
    source.addEventListener("error", async () => {
      if (source.readyState !== EventSource.CLOSED) { setLive("reconnecting"); return; }
      // Closed for good (an HTTP error, e.g. 401 after logging out): find out why, then try again.
      setLive("lost");
      if (await sessionEnded()) {
        clearTimeout(lostTimer);
        conn.hidden = false;
        conn.textContent = _("Your session has ended.") + " ";
        conn.append(Object.assign(document.createElement("a"), {href: root.dataset.login, textContent: _("Log in again")}));
        setEnabled(false);
        return;
      }
      setTimeout(connect, retry);
      retry = Math.min(retry * 2, 30000);
    });
  }

  const initial = document.getElementById("panel-initial");
  if (initial) apply(JSON.parse(initial.textContent));
  connect();
})();
