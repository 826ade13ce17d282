/* The rooms board (rooms.html): polls /api/gateways and /api/devices every 3 s and redraws the cards.
 * A file, not an inline script, so the Content-Security-Policy can forbid inline scripts (dashboards/security.py).
 */
(() => {
  "use strict";
  const UNITS = {temperature_c: "°C", humidity_pct: "%RH", co2_ppm: "ppm", pm25_ugm3: "µg/m³",
                 illuminance_lux: "lx", noise_dba: "dB(A)", people_count: "people", lamp_hours: "h", volume: ""};
  function esc(s) { return String(s).replace(/[&<>"']/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;","'":"&#39;"}[c])); }
  async function refresh() {
    try {
      const [gws, devs] = await Promise.all([fetch("/api/gateways").then(r => r.json()),
                                             fetch("/api/devices").then(r => r.json())]);
      const html = gws.map(gw => {
        const mine = devs.filter(d => d.gateway === gw.id);
        const rows = mine.map(d => {
          const vals = Object.entries(d.latest).sort().map(([k, v]) =>
            `<span class="metric" data-metric="${esc(k)}"><b>${esc(typeof v === "number" ? Math.round(v * 10) / 10 : v)}</b> ${esc(UNITS[k] ?? k)}</span>`).join(" ");
          return `<li class="device" data-device="${esc(d.id)}"><span class="badge ${esc(d.status)}">${esc(d.status)}</span>
                  <span class="dev">${esc(d.id)}</span> <span class="muted">${esc(d.profile)}</span><div>${vals}</div></li>`;
        }).join("");
        return `<section class="room card" data-gateway="${esc(gw.id)}">
          <h2>Room ${esc(gw.room || "?")} ${gw.online ? '<span class="badge ok">online</span>' : gw.installed === false
            ? '<span class="badge uninstalled">not installed yet</span>' : '<span class="badge offline">offline</span>'}</h2>
          <p class="muted">${esc(gw.school)} · gateway ${esc(gw.id)} · ${gw.installed === false ? "registered, has not sent anything yet"
            : `${gw.received} msgs · gaps ${gw.gaps} · dups ${gw.duplicates}`}${
            gw.waiting ? ` · <span class="waiting" data-waiting="${esc(gw.waiting)}">waiting for central ${esc(gw.waiting)}${gw.waiting_age != null ? ` (oldest ${esc(gw.waiting_age)} s)` : ""}</span>` : ""}</p>
          ${gw.clock_wrong ? `<p class="clockwarn" data-clock-offset="${esc(gw.clock_offset)}">⚠ gateway clock off by ${esc(Math.round(Math.abs(gw.clock_offset) / 60))} min (check NTP)</p>` : ""}
          <ul class="devices">${rows}</ul></section>`;
      }).join("");
      document.getElementById("rooms").innerHTML = html || "<p>No gateway is registered or has reported yet.</p>";
      document.getElementById("updated").textContent = "Updated " + new Date().toLocaleTimeString();
    } catch (e) {
      document.getElementById("updated").textContent = "Cannot reach the server: " + e;
    }
  }
  refresh();
  setInterval(refresh, 3000);
})();
