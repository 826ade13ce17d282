// Provisioning pages: copy buttons, confirmations, and the address fields of the chosen profile.
(function () {
  document.querySelectorAll("[data-copy]").forEach(btn => btn.addEventListener("click", () => {
    const el = document.querySelector(btn.dataset.copy);
    const text = el.value !== undefined ? el.value : el.textContent;
    navigator.clipboard.writeText(text).then(() => { btn.textContent = _("Copied"); });
  }));
  document.querySelectorAll("form[data-confirm]").forEach(f => f.addEventListener("submit", e => {
    if (!window.confirm(f.dataset.confirm)) e.preventDefault();
  }));
  const profile = document.getElementById("profile");
  if (profile) {
    const show = () => {
      const opt = profile.selectedOptions[0];
      const protocol = opt ? opt.dataset.protocol : "";
      document.querySelectorAll("fieldset.addr").forEach(fs => {
        const on = fs.dataset.protocol === protocol;
        fs.hidden = !on;
        fs.disabled = !on;
      });
    };
    profile.addEventListener("change", show);
    show();
  }
  document.querySelectorAll("[data-ts]").forEach(el => {
    const s = Math.max(0, Date.now() / 1000 - Number(el.dataset.ts));
    el.textContent = s < 90 ? _("seen %(n)s s ago", {n: Math.round(s)})
      : s < 5400 ? _("seen %(n)s min ago", {n: Math.round(s / 60)})
      : s < 172800 ? _("seen %(n)s h ago", {n: Math.round(s / 3600)}) : _("seen %(n)s days ago", {n: Math.round(s / 86400)});
  });
})();
