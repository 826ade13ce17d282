/* Languages and local time for the page scripts (dashboards/i18n.py). The page carries its language, the
 * site's time zone and the scripts' messages translated (<script id="i18n" type="application/json">);
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
    // The calendar day (YYYY-MM-DD) of `ts` in the site's zone: "today?" is asked of the site, not the browser.
    dayKey: (ts) => { const p = parts(ts, "date"); return `${p.year}-${p.month}-${p.day}`; },
    // Seconds the site's zone is ahead of UTC at `ts` (negative west of Greenwich).
    utcOffset: (ts) => {
      const p = parts(ts, "full");
      const local = Date.UTC(+p.year, +p.month - 1, +p.day, +p.hour, +p.minute, +p.second);
      return Math.round((local - Math.floor(ts) * 1000) / 1000);
    },
  };
})();
