/* Vietnamese Telex input, as a pure function: Telex.apply(text, key) -> new text.
 *
 * aa→â aw→ă ee→ê oo→ô ow→ơ uw→ư uow→ươ dd→đ; tone keys s f r x j (sắc huyền hỏi ngã nặng), z removes
 * the tone; pressing a modifier again undoes it and types the letter ("ass" → "as"). The tone is
 * re-placed after every key by the spelling rules (qu/gi initials, marked vowels first, final
 * consonants, old style "hòa, thúy" by default; {style: "new"} gives "hoà, thuý").
 * Works in the browser (window.Telex) and in node (module.exports) for the unit tests.
 */
(function (root) {
  "use strict";

  var TONE_MARKS = ["", "\u0300", "\u0301", "\u0309", "\u0303", "\u0323"]; // -, f, s, r, x, j
  var TONE_KEYS = { f: 1, s: 2, r: 3, x: 4, j: 5 };
  var VOWEL_MARKS = { "\u0306": "breve", "\u0302": "circ", "\u031b": "horn" };
  var MARK_CHARS = { breve: "\u0306", circ: "\u0302", horn: "\u031b" };
  var VOWELS = "aeiouy";
  var WORD_RE = /[A-Za-z\u00C0-\u024F\u1E00-\u1EFF]+$/;

  function parseChar(ch) {
    var lower = ch.toLowerCase();
    var up = lower !== ch;
    if (lower === "\u0111") return { b: "d", stroke: true, m: "", t: 0, up: up };
    var parts = lower.normalize("NFD");
    var c = { b: parts.charAt(0), stroke: false, m: "", t: 0, up: up };
    for (var i = 1; i < parts.length; i++) {
      var mark = parts.charAt(i);
      var tone = TONE_MARKS.indexOf(mark);
      if (tone > 0) c.t = tone;
      else if (VOWEL_MARKS[mark]) c.m = VOWEL_MARKS[mark];
    }
    return c;
  }

  function buildChar(c) {
    var s = c.stroke ? "\u0111" : c.b;
    if (c.m) s += MARK_CHARS[c.m];
    if (c.t) s += TONE_MARKS[c.t];
    s = s.normalize("NFC");
    return c.up ? s.toUpperCase() : s;
  }

  function isVowel(c) {
    return !c.stroke && VOWELS.indexOf(c.b) >= 0;
  }

  function literal(ch, up) {
    return { b: ch, stroke: false, m: "", t: 0, up: up };
  }

  /* Index range [start, end) of the main vowel group, after a qu / gi initial. */
  function vowelGroup(chars) {
    var bases = chars.map(function (c) { return c.stroke ? "đ" : c.b; }).join("");
    var start = 0;
    if ((bases.indexOf("qu") === 0 || bases.indexOf("gi") === 0) && chars.length > 2 && isVowel(chars[2])) {
      start = 2;
    }
    var i = start;
    while (i < chars.length && !isVowel(chars[i])) i++;
    if (i >= chars.length) return null;
    var end = i;
    while (end < chars.length && isVowel(chars[end])) end++;
    return { start: i, end: end };
  }

  function tonePosition(chars, style) {
    var g = vowelGroup(chars);
    if (!g) return -1;
    for (var k = g.end - 1; k >= g.start; k--) if (chars[k].m) return k;
    var n = g.end - g.start;
    if (n === 1) return g.start;
    if (g.end < chars.length) return g.end - 1; // a final consonant follows
    if (n >= 3) return g.start + 1;
    var pair = chars[g.start].b + chars[g.start + 1].b;
    if (style === "new" && (pair === "oa" || pair === "oe" || pair === "uy")) return g.start + 1;
    return g.start;
  }

  function currentTone(chars) {
    for (var i = 0; i < chars.length; i++) if (chars[i].t) return chars[i].t;
    return 0;
  }

  function placeTone(chars, tone, style) {
    chars.forEach(function (c) { c.t = 0; });
    if (!tone) return true;
    var at = tonePosition(chars, style);
    if (at < 0) return false;
    chars[at].t = tone;
    return true;
  }

  function modifyVowel(chars, k, up, style) {
    var tone = currentTone(chars);
    var g = vowelGroup(chars);
    var target = -1;
    var mark = "";
    if (g && k === "w") {
      for (var i = g.start; i < g.end - 1; i++) {
        if (chars[i].b === "u" && chars[i + 1].b === "o") {
          if (chars[i].m === "horn" && chars[i + 1].m === "horn") {
            chars[i].m = chars[i + 1].m = "";
            chars.push(literal(k, up));
          } else {
            chars[i].m = chars[i + 1].m = "horn";
          }
          placeTone(chars, tone, style);
          return true;
        }
      }
      for (var j = g.end - 1; j >= g.start; j--) {
        if ("aou".indexOf(chars[j].b) >= 0) { target = j; mark = chars[j].b === "a" ? "breve" : "horn"; break; }
      }
    } else if (g) {
      for (var m = g.end - 1; m >= g.start; m--) {
        if (chars[m].b === k) { target = m; mark = "circ"; break; }
      }
    }
    if (target < 0) return false;
    if (chars[target].m === mark) {
      chars[target].m = "";
      chars.push(literal(k, up));
    } else {
      chars[target].m = mark;
    }
    placeTone(chars, tone, style);
    return true;
  }

  function strokeD(chars, k, up) {
    if (!chars.length || chars[0].b !== "d") return false;
    if (chars[0].stroke) {
      chars[0].stroke = false;
      chars.push(literal(k, up));
    } else {
      chars[0].stroke = true;
    }
    return true;
  }

  function toneKey(chars, k, up, style) {
    if (!vowelGroup(chars)) return false;
    var cur = currentTone(chars);
    if (k === "z") {
      if (!cur) return false;
      placeTone(chars, 0, style);
      return true;
    }
    if (cur === TONE_KEYS[k]) {
      placeTone(chars, 0, style);
      chars.push(literal(k, up));
      return true;
    }
    return placeTone(chars, TONE_KEYS[k], style);
  }

  function apply(text, key, options) {
    var style = (options && options.style) || "old";
    if (typeof key !== "string" || key.length !== 1 || !/[A-Za-z]/.test(key)) return text + key;
    var k = key.toLowerCase();
    var up = k !== key;
    var match = WORD_RE.exec(text);
    var word = match ? match[0] : "";
    var chars = Array.from(word).map(parseChar);
    var done = false;
    if (k in TONE_KEYS || k === "z") done = toneKey(chars, k, up, style);
    else if (k === "a" || k === "e" || k === "o" || k === "w") done = modifyVowel(chars, k, up, style);
    else if (k === "d") done = strokeD(chars, k, up);
    if (!done) {
      var tone = currentTone(chars);
      chars.push(literal(k, up));
      placeTone(chars, tone, style);
    }
    return text.slice(0, text.length - word.length) + chars.map(buildChar).join("");
  }

  /* Type a whole key sequence from ``start`` (tests, and pasting typed sequences). */
  function type(keys, options, start) {
    var out = start || "";
    Array.from(keys).forEach(function (k) { out = apply(out, k, options); });
    return out;
  }

  var api = { apply: apply, type: type };
  if (typeof module === "object" && module.exports) module.exports = api;
  else root.Telex = api;
})(this);
