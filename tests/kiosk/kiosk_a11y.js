// Runs in the page: every visible target >= 48x48 CSS px, every visible text >= 4.5:1 contrast.
(() => {
  const parse = (c) => { const m = c.match(/rgba?\(([^)]+)\)/); if (!m) return [0, 0, 0, 0];
    const p = m[1].split(/[ ,\/]+/).filter(Boolean).map(Number); return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1]; };
  const over = (top, under) => { const a = top[3]; return [0, 1, 2].map(i => top[i] * a + under[i] * (1 - a)).concat([1]); };
  const lum = (c) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2]); };
  const visible = (el) => { if (!el.getClientRects().length) return false; const s = getComputedStyle(el);
    return s.visibility !== 'hidden' && s.display !== 'none'; };
  const background = (el) => { const chain = []; for (let e = el; e; e = e.parentElement) chain.push(e);
    let bg = [255, 255, 255, 1]; for (const e of chain.reverse()) { const c = parse(getComputedStyle(e).backgroundColor);
      if (c[3] > 0) bg = over(c, bg); } return bg; };
  const label = (el) => (el.className && el.className.baseVal === undefined ? el.className : el.tagName) + ': ' +
    (el.textContent || '').trim().slice(0, 40);
  const small = [], faint = [];
  const targets = document.querySelectorAll('button, a[href], input, select, textarea, [role=button], [data-go], [data-post], [data-action], [data-key]');
  for (const el of targets) { if (!visible(el)) continue; const r = el.getBoundingClientRect();
    if (r.width < 48 || r.height < 48) small.push(label(el) + ` (${Math.round(r.width)}x${Math.round(r.height)})`); }
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const seen = new Set();
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const el = n.parentElement; if (!el || seen.has(el) || !n.textContent.trim() || !visible(el)) continue;
    if (el.closest('svg, script, style, noscript')) continue;
    seen.add(el);
    const bg = background(el); const fg = over(parse(getComputedStyle(el).color), bg);
    const l1 = lum(fg), l2 = lum(bg); const ratio = (Math.max(l1, l2) + 0.05) / (Math.min(l1, l2) + 0.05);
    if (ratio < 4.5) faint.push(label(el) + ` (${ratio.toFixed(2)})`);
  }
  return {small, faint, checkedText: seen.size, checkedTargets: targets.length};
})
