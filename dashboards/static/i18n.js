/* Languages and local time for the page scripts (dashboards/i18n.py). The page carries its language, its
 * time zone (the site's, or its school's: dashboards/i18n.py page_zone) and the scripts' messages
 * translated (<script id="i18n" type="application/json">);
 * nothing here asks the browser for its own language or zone.
 *
 *   _('Power on')                          -> '开机' in zh-CN (the scripts use double quotes: extracted)
 *   _('%(n)s rooms', {n: 3})               -> parameters as in the catalog (Python's %(name)s)
 *   campusTime.dateTime(ts), .date(ts), .clock(ts)  -> "2026-12-04 周五 14:03", "2026-12-04 周五", "14:03:05"
 */
(() => {
  "use strict";
  const el = document.getElementById("i18n");
  const data = el ? JSON.parse(el.textContent) : {lang: "en", timeZone: "Asia/Shanghai", messages: {}};

  window._ = (msgid, params) => {
    const text = data.messages[msgid] || msgid;
    return params ? text.replace(/%\((\w+)\)s/g, (all, key) => (key in params ? String(params[key]) : all)) : text;
  };

  // The contract's identifiers as a person reads them, for every page script (one place): device kinds,
  // device statuses (central/overview.py), metric names beside a value, and state values.
  window.campusTerms = {
    kind: {environment: _("environment sensor"), card_reader: _("card reader"), projector: _("projector"),
           display: _("display"), camera: _("camera"), meter: _("electricity meter"), device: _("device")},
    status: {ok: _("ok"), offline: _("offline"), fault: _("fault"), unknown: _("unknown"),
             "never reported": _("never reported"), "not installed yet": _("not installed yet")},
    metric: {temperature_c: "°C", humidity_pct: "%RH", co2_ppm: "ppm", pm25_ugm3: "µg/m³", illuminance_lux: "lx",
             noise_dba: "dB(A)", energy_kwh: "kWh", power_w: "W", voltage_v: "V", current_a: "A", people_count: _("people"), lamp_hours: _("h lamp"), filter_hours: _("h filter"),
             volume: _("vol"), power: _("power"), input: _("input"), muted: _("muted"), error_fan: _("fan"),
             error_lamp: _("lamp"), error_temperature: _("temperature"), error_cover: _("cover"),
             error_filter: _("filter"), error_other: _("other"),
             // A card reader's line counters (edge_agent/drivers: serial readers).
             swipes: _("swipes"), frames_ok: _("good frames"), frames_bad: _("bad frames"),
             bad_checksum: _("bad checksums"), malformed: _("malformed"), truncated: _("truncated"),
             noise_bytes: _("noise bytes")},
    value: {on: _("on"), off: _("off"), warming: _("warming up"), cooling: _("cooling down"), ok: _("ok"),
            warning: _("warning"), error: _("error")},
  };
  // A metric's value as shown: a state word translated (not an input's name), a number as it is.
  window.campusTerms.shown = (metric, v) =>
    typeof v === "string" && metric !== "input" ? (window.campusTerms.value[v] || v) : v;

  const formats = {};
  const parts = (ts, kind) => {
    if (!formats[kind]) {
      const opts = {timeZone: data.timeZone, hourCycle: "h23"};
      if (kind !== "clock") Object.assign(opts, {year: "numeric", month: "2-digit", day: "2-digit", weekday: "short"});
      if (kind !== "date") Object.assign(opts, {hour: "2-digit", minute: "2-digit", second: "2-digit"});
      formats[kind] = new Intl.DateTimeFormat(data.lang, opts);
    }
    const out = {};
    for (const p of formats[kind].formatToParts(new Date(ts * 1000))) out[p.type] = p.value;
    return out;
  };
  const day = (p) => `${p.year}-${p.month}-${p.day} ${p.weekday}`;
  const hm = (p, seconds) => `${p.hour}:${p.minute}` + (seconds ? `:${p.second}` : "");

  window.campusTime = {
    lang: data.lang,
    timeZone: data.timeZone,
    dateTime: (ts, seconds = false) => { const p = parts(ts, "full"); return `${day(p)} ${hm(p, seconds)}`; },
    date: (ts) => day(parts(ts, "date")),
    clock: (ts, seconds = true) => hm(parts(ts, "clock"), seconds),
    // The calendar day (YYYY-MM-DD) of `ts` in the page's zone: "today?" is asked of the page, not the browser.
    dayKey: (ts) => { const p = parts(ts, "date"); return `${p.year}-${p.month}-${p.day}`; },
    // Seconds the page's zone is ahead of UTC at `ts` (negative west of Greenwich).
    utcOffset: (ts) => {
      const p = parts(ts, "full");
      const local = Date.UTC(+p.year, +p.month - 1, +p.day, +p.hour, +p.minute, +p.second);
      return Math.round((local - Math.floor(ts) * 1000) / 1000);
    },
  };
})();
