/* The rooms board (rooms.html): polls a page of /api/gateways (PAGE rooms from ?offset=, matching ?q=) and
 * those rooms' /api/devices every 3 s and redraws the cards; X-Total-Count tells whether there is a next page.
 * A file, not an inline script, so the Content-Security-Policy can forbid inline scripts (dashboards/security.py).
 */
(() => {
  "use strict";
  const {metric: UNITS, status: STATUS} = campusTerms;  // static/i18n.js
  function esc(s) { return String(s).replace(/[&<>"']/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;","'":"&#39;"}[c])); }
  const PAGE = 24;
  const params = new URLSearchParams(location.search);
  const offset = Math.max(0, parseInt(params.get("offset") || "0", 10) || 0);
  const q = params.get("q") || "";
  function link(to) {
    const p = new URLSearchParams({offset: String(Math.max(0, to))});
    if (q) p.set("q", q);
    return "?" + p.toString();
  }
  async function refresh() {
    try {
      const list = await fetch(`/api/gateways?${new URLSearchParams({limit: String(PAGE), offset: String(offset), q})}`);
      const gws = await list.json();
      const total = parseInt(list.headers.get("X-Total-Count") || "0", 10);
      const devs = gws.length ? await fetch(`/api/devices?${new URLSearchParams(
        {gateway: gws.map(gw => gw.id).join(","), limit: "1000"})}`).then(r => r.json()) : [];
      const pager = document.getElementById("pager");
      if (pager) {
        pager.innerHTML = `<span class="muted" data-total="${total}">${total ? esc(_("%(first)s–%(last)s of %(total)s rooms", {first: offset + 1, last: Math.min(offset + PAGE, total), total})) : ""}</span>
          ${offset > 0 ? `<a rel="prev" href="${link(offset - PAGE)}">${esc(_("← Previous"))}</a>` : ""}
          ${offset + PAGE < total ? `<a rel="next" href="${link(offset + PAGE)}">${esc(_("Next →"))}</a>` : ""}`;
      }
      const html = gws.map(gw => {
        const mine = devs.filter(d => d.gateway === gw.id);
        const rows = mine.map(d => {
          const vals = Object.entries(d.latest).sort().map(([k, v]) =>
            `<span class="metric" data-metric="${esc(k)}"><b>${esc(typeof v === "number" ? Math.round(v * 10) / 10 : campusTerms.shown(k, v))}</b> ${esc(UNITS[k] ?? k)}</span>`).join(" ");
          return `<li class="device" data-device="${esc(d.id)}"><span class="badge ${esc(d.status)}">${esc(STATUS[d.status] || d.status)}</span>
                  <span class="dev">${esc(d.id)}</span> <span class="muted">${esc(d.profile)}</span><div>${vals}</div></li>`;
        }).join("");
        return `<section class="room card" data-gateway="${esc(gw.id)}">
          <h2>${esc(_("Room %(room)s", {room: gw.room || "?"}))} ${gw.online ? `<span class="badge ok">${esc(_("online"))}</span>` : gw.installed === false
            ? `<span class="badge uninstalled">${esc(_("not installed yet"))}</span>` : `<span class="badge offline">${esc(_("offline"))}</span>`}</h2>
          <p class="muted">${esc(gw.school)} · ${esc(_("gateway %(id)s", {id: gw.id}))} · ${gw.installed === false ? esc(_("registered, has not sent anything yet"))
            : esc(_("%(received)s msgs · gaps %(gaps)s · dups %(dups)s", {received: gw.received, gaps: gw.gaps, dups: gw.duplicates}))}${
            gw.waiting ? ` · <span class="waiting" data-waiting="${esc(gw.waiting)}">${esc(_("waiting for central %(count)s", {count: gw.waiting}))}${gw.waiting_age != null ? " " + esc(_("(oldest %(age)s s)", {age: gw.waiting_age})) : ""}</span>` : ""}</p>
          ${gw.clock_wrong ? `<p class="clockwarn" data-clock-offset="${esc(gw.clock_offset)}">${esc(_("⚠ gateway clock off by %(minutes)s min (check NTP)", {minutes: Math.round(Math.abs(gw.clock_offset) / 60)}))}</p>` : ""}
          <ul class="devices">${rows}</ul></section>`;
      }).join("");
      document.getElementById("rooms").innerHTML = html || `<p>${esc(_("No gateway is registered or has reported yet."))}</p>`;
      document.getElementById("updated").textContent = _("Updated %(time)s", {time: campusTime.clock(Date.now() / 1000)});
    } catch (e) {
      document.getElementById("updated").textContent = _("Cannot reach the server: %(error)s", {error: String(e)});
    }
  }
  refresh();
  setInterval(refresh, 3000);
})();
