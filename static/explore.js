// The explore page's behaviour: a tooltip for the point under the pointer or the keyboard
// focus, search as you type (the posts /api/search finds light up; the map stays), and topic
// links that light their posts up in place. Without it the page works as links and a form.
"use strict";

(() => {
  const map = document.querySelector("figure.map svg.ragserver-map");
  const form = document.getElementById("explore");
  if (!map || !form) return;  // no posts, or no map yet
  const figure = map.closest("figure");
  const tip = document.getElementById("map-tip");
  const box = document.getElementById("explore-q");
  const status = document.getElementById("explore-status");
  const points = [...map.querySelectorAll(".point")];
  const SEARCH = form.dataset.search;  // /api/search, wherever the app is mounted
  const MATCHES = Number(form.dataset.matches);  // as many as the server lights up
  const DEBOUNCE_MS = 250;
  const GAP = 6;  // px between a point and its tooltip

  // -- the tooltip ------------------------------------------------------------

  /** A point's title. Its <title> (the tooltip without script) becomes its aria-label on
   *  first use, so the browser's own tooltip does not cover this one. */
  function titleOf(point) {
    const title = point.querySelector("title");
    if (title) {
      point.setAttribute("aria-label", title.textContent);
      title.remove();
    }
    return point.getAttribute("aria-label") || "";
  }

  function showTip(point) {
    tip.textContent = titleOf(point);
    tip.hidden = false;
    tip.style.left = "0px";  // its full width, not what is left of the map beside its last place
    const area = figure.getBoundingClientRect();
    const dot = point.getBoundingClientRect();
    // Above the point (below it at the top edge), never past the map's sides.
    const left = Math.max(0, Math.min(dot.left + dot.width / 2 - area.left - tip.offsetWidth / 2,
                                      area.width - tip.offsetWidth));
    const above = dot.top - area.top - tip.offsetHeight - GAP;
    // Set through the CSSOM, which the Content-Security-Policy allows (style attributes it does not).
    tip.style.left = `${left}px`;
    tip.style.top = `${above >= 0 ? above : dot.bottom - area.top + GAP}px`;
  }

  function hideTip() {
    tip.hidden = true;
  }

  function onPoint(event) {
    const point = event.target.closest(".point");
    if (point) showTip(point);
  }

  // On the figure, not the <svg>: Chromium makes an SVG element with focus listeners focusable,
  // an extra Tab stop before the points.
  figure.addEventListener("pointerover", onPoint);
  figure.addEventListener("focusin", onPoint);
  figure.addEventListener("pointerout", hideTip);
  figure.addEventListener("focusout", hideTip);

  // -- lighting points up ------------------------------------------------------

  /** Light up the points for which `lit(point)` is true and fade the rest (none lit: show
   *  them all alike); returns how many are lit. */
  function light(lit) {
    let count = 0;
    for (const point of points) {
      const on = Boolean(lit && lit(point));
      point.classList.toggle("match", on);
      count += on;
    }
    map.classList.toggle("filtering", count > 0);
    document.querySelectorAll(".topic.chosen").forEach((topic) => topic.classList.remove("chosen"));
    return count;
  }

  function say(...parts) {
    status.replaceChildren(...parts);
  }

  /** Keep the address in step (?q= or ?topic=, and the axis as it was), for reloads and links. */
  function remember(name, value) {
    const url = new URL(location.href);
    url.searchParams.delete("q");
    url.searchParams.delete("topic");
    if (value) url.searchParams.set(name, value);
    history.replaceState(null, "", url);
  }

  // -- search as you type --------------------------------------------------------

  let timer = 0;
  let latest = 0;         // number of the newest search; older answers are dropped
  let controller = null;  // aborts the search in flight

  async function search(query) {
    controller = new AbortController();
    const mine = ++latest;
    let body;
    let ok = false;
    try {
      const response = await fetch(`${SEARCH}?q=${encodeURIComponent(query)}&n=${MATCHES}`,
                                   { signal: controller.signal });
      body = await response.json();
      ok = response.ok;
    } catch (error) {
      if (error.name === "AbortError") return;
      body = { error: "Search is unavailable." };
    }
    if (mine !== latest) return;
    if (!ok) return say(typeof body.error === "string" ? body.error : "Search is unavailable.");
    const sources = new Set((Array.isArray(body.results) ? body.results : []).map((r) => r.source));
    const found = light((point) => sources.has(point.dataset.source));
    say(found ? `${found} ${found === 1 ? "post matches" : "posts match"} “${query}”.` : `No posts match “${query}”.`);
  }

  box.addEventListener("input", () => {
    clearTimeout(timer);
    controller?.abort();  // whatever is on its way answers a query no longer in the box
    latest++;
    const query = box.value.trim();
    remember("q", query);
    if (!query) {
      light(null);
      return say();
    }
    say("Searching…");
    timer = setTimeout(search, DEBOUNCE_MS, query);
  });

  // -- topics ------------------------------------------------------------------

  document.addEventListener("click", (event) => {
    const link = event.target.closest("a[data-show-topic]");
    if (!link || event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey) return;
    event.preventDefault();
    const topic = link.dataset.showTopic;
    const count = light((point) => point.dataset.topic === topic);
    link.closest(".topic").classList.add("chosen");
    box.value = "";
    remember("topic", topic);
    const all = document.createElement("a");
    all.href = location.pathname;
    all.textContent = "Show every topic";
    all.addEventListener("click", (click) => {
      click.preventDefault();
      light(null);
      remember("topic", "");
      say();
    });
    say(`“${link.textContent}” lit up: ${count} post${count === 1 ? "" : "s"}. `, all);
    figure.scrollIntoView({ block: "nearest", behavior: "smooth" });
  });
})();
