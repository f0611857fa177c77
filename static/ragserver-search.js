/* ragserver search widget: a search box for any page, from one tag:
 *   <script src="https://SERVER/static/ragserver-search.js" data-endpoint="https://SERVER" defer></script>
 * data-endpoint (default: where this script came from), data-placeholder, and data-target: a CSS selector
 * of an element to put a Search button into (default: a floating button at the bottom right).
 * Ctrl+K / ⌘K or / opens it, as do window.ragserverSearch.open() and .close().
 * Related posts: every <div data-ragserver-related></div> on the page is filled with a list of the posts
 * related to this page (or to the post URL given as the attribute's value), the posts near it on the map
 * of the blog and a link to its topic there; data-n sets how many related posts (1-10).
 * The page's origin must be in the server's RAGSERVER_ALLOWED_ORIGINS unless it is the server's own.
 */
(() => {
  "use strict";
  const script = document.currentScript;
  if (!script || window.ragserverSearch) return;  // a module import, or the tag pasted twice
  const base = script.dataset.endpoint || new URL(script.src, location.href).origin;
  const endpoint = base.replace(/\/+$/, "");
  const mac = /mac|iphone|ipad/i.test(navigator.userAgentData?.platform || navigator.platform || "");
  const shortcut = mac ? "⌘K" : "Ctrl K";
  const DEBOUNCE_MS = 200;

  // all: initial keeps the page's inherited styles (font, colour, line height ...) out.
  const CSS = `
    :host { all: initial; color-scheme: light dark; font: 15px/1.45 system-ui, -apple-system, sans-serif;
      --bg: #fff; --fg: #1d1d1f; --muted: #6b6b70; --line: #e3e3e8;
      --accent: #2456c7; --hover: #eef2fc; --mark: #fff0a8; }
    @media (prefers-color-scheme: dark) {
      :host { --bg: #1f1f23; --fg: #ececf0; --muted: #a1a1aa; --line: #3a3a40;
        --accent: #8fb0ff; --hover: #2c3345; --mark: #665c1e; }
    }
    * { box-sizing: border-box; }
    button, input { font: inherit; color: inherit; }
    .launcher { position: fixed; right: 1rem; bottom: 1rem; z-index: 2147483000; padding: .45rem .8rem;
      border: 1px solid var(--line); border-radius: 999px; background: var(--bg); cursor: pointer;
      box-shadow: 0 2px 8px rgb(0 0 0 / .15); }
    kbd { font: inherit; font-size: .8em; color: var(--muted); margin-left: .2em; }
    dialog { width: min(40rem, 100% - 2rem); max-width: none; max-height: min(36rem, 100% - 6rem);
      margin: 4rem auto auto; padding: 0; border: 1px solid var(--line); border-radius: 12px;
      background: var(--bg); color: var(--fg); box-shadow: 0 12px 40px rgb(0 0 0 / .3); overflow: hidden; }
    dialog[open] { display: flex; }
    dialog::backdrop { background: rgb(0 0 0 / .4); }
    .box { display: flex; flex-direction: column; flex: 1; min-height: 0; min-width: 0; }
    .bar { display: flex; gap: .5rem; padding: .75rem; border-bottom: 1px solid var(--line); }
    input { flex: 1; min-width: 0; font-size: 16px; padding: .5rem .6rem; background: transparent;
      border: 1px solid var(--line); border-radius: 8px; }
    input:focus { outline: 2px solid var(--accent); outline-offset: -1px; }
    .close { border: 0; background: none; color: var(--muted); cursor: pointer; padding: 0 .4rem; }
    .status { margin: 0; padding: .4rem .9rem 0; min-height: 1.6rem; color: var(--muted); font-size: .85rem; }
    ul { list-style: none; margin: 0; padding: .25rem .5rem .5rem; overflow-y: auto; overscroll-behavior: contain; }
    li { border-radius: 8px; }
    li[aria-selected="true"] { background: var(--hover); }
    .row { display: block; padding: .5rem .6rem; color: inherit; text-decoration: none; overflow-wrap: anywhere; }
    .title { font-weight: 600; color: var(--accent); }
    .date { margin-left: .5em; color: var(--muted); font-size: .8rem; white-space: nowrap; }
    .snippet { display: block; margin-top: .15rem; color: var(--muted); font-size: .875rem; }
    mark { background: var(--mark); color: var(--fg); border-radius: 2px; }
    .ask { border-top: 1px solid var(--line); margin-top: .25rem; }
    .ask .row { color: var(--accent); font-weight: 600; }
    /* a phone: the whole width, from the top */
    @media (max-width: 40rem) {
      dialog { width: 100%; max-height: 100%; margin: 0 0 auto; border: 0; border-radius: 0 0 12px 12px; }
    }`;

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text != null) node.textContent = text;
    return node;
  }

  /** The link for a result, or null unless it is http(s) or relative (no javascript:, data: ...). */
  function resultHref(url, anchor) {
    if (typeof url !== "string" || !url) return null;
    try {
      if (!["http:", "https:"].includes(new URL(url, location.href).protocol)) return null;
    } catch {
      return null;
    }
    return anchor ? `${url}#${anchor}` : url;
  }

  /** The server's snippet rebuilt from its text and <mark> elements only: no other tags, no attributes. */
  function snippetFragment(html) {
    const parsed = new DOMParser().parseFromString(String(html ?? ""), "text/html");
    const out = document.createDocumentFragment();
    const copy = (from, to) => {
      for (const node of from.childNodes) {
        if (node.nodeType === Node.TEXT_NODE) to.append(node.data);
        else if (node.nodeName === "MARK") copy(node, to.appendChild(document.createElement("mark")));
        else if (node.nodeType === Node.ELEMENT_NODE) copy(node, to);
      }
    };
    copy(parsed.body, out);
    return out;
  }

  function init() {
    const host = document.createElement("ragserver-search");
    const root = host.attachShadow({ mode: "open" });
    // A constructed stylesheet is not inline style, so pages whose Content-Security-Policy
    // forbids 'unsafe-inline' styles (ragserver's own among them) still style the box.
    const constructed = "adoptedStyleSheets" in root;
    if (constructed) {
      const sheet = new CSSStyleSheet();
      sheet.replaceSync(CSS);
      root.adoptedStyleSheets = [sheet];
    }
    root.innerHTML = `${constructed ? "" : `<style>${CSS}</style>`}
      <dialog aria-label="Search the blog">
        <div class="box">
          <div class="bar">
            <input type="search" role="combobox" aria-label="Search the blog" aria-autocomplete="list"
                   aria-controls="results" aria-expanded="false" autocomplete="off" spellcheck="false">
            <button type="button" class="close" aria-label="Close search">Close</button>
          </div>
          <p class="status" aria-live="polite"></p>
          <ul id="results" role="listbox" aria-label="Search results"></ul>
        </div>
      </dialog>`;
    const dialog = root.querySelector("dialog");
    const input = root.querySelector("input");
    const status = root.querySelector(".status");
    const list = root.querySelector("ul");
    input.placeholder = script.dataset.placeholder || "Search posts…";

    let active = -1;        // index of the selected option, -1 for none
    let latest = 0;         // number of the newest search; older responses are dropped
    let controller = null;  // aborts the search in flight
    let timer = 0;
    let returnTo = null;

    function show(results, query, message) {
      const options = results.map((result, i) => {
        const href = resultHref(result.url, result.anchor);
        const row = element(href ? "a" : "div", "row");
        if (href) Object.assign(row, { href, tabIndex: -1 });
        row.append(element("span", "title", result.title || result.url || "Untitled"));
        if (result.date) row.append(element("span", "date", result.date));
        const snippet = element("span", "snippet");
        snippet.append(snippetFragment(result.snippet));
        row.append(snippet);
        return option(`result-${i}`, row);
      });
      if (query) {
        const ask = Object.assign(element("a", "row", `Ask the blog: “${query}”`),
                                  { href: `${endpoint}/?q=${encodeURIComponent(query)}`, tabIndex: -1 });
        options.push(option("ask", ask, "ask"));
      }
      list.replaceChildren(...options);
      input.setAttribute("aria-expanded", String(options.length > 0));
      status.textContent = message;
      select(-1);
    }

    function option(id, row, className) {
      const li = element("li", className);
      li.id = id;
      li.setAttribute("role", "option");
      li.append(row);
      return li;
    }

    function select(index, scroll = true) {
      const current = list.children[index];
      active = current ? index : -1;
      [...list.children].forEach((li, i) => li.setAttribute("aria-selected", String(i === active)));
      if (!current) return input.removeAttribute("aria-activedescendant");
      input.setAttribute("aria-activedescendant", current.id);
      if (scroll) current.scrollIntoView({ block: "nearest" });
    }

    function move(step) {
      const count = list.children.length;
      if (!count) return;
      select(active < 0 ? (step > 0 ? 0 : count - 1) : (active + step + count) % count);
    }

    async function search(query) {
      controller = new AbortController();
      const mine = ++latest;
      let results = [];
      let message;
      try {
        const response = await fetch(`${endpoint}/api/search?q=${encodeURIComponent(query)}&n=8`,
                                     { signal: controller.signal });
        const body = await response.json();
        if (response.ok) results = Array.isArray(body.results) ? body.results : [];
        else message = typeof body.error === "string" ? body.error : "Search is unavailable";
      } catch (error) {
        if (error.name === "AbortError") return;
        message = "Search is unavailable";  // offline, blocked by CORS, or not JSON
      }
      if (mine !== latest) return;
      const count = results.length;
      show(results, query, message ?? (count ? `${count} post${count === 1 ? "" : "s"}` : "No posts match"));
    }

    function onInput() {
      clearTimeout(timer);
      controller?.abort();  // whatever is on its way answers a query no longer in the box
      latest++;
      const query = input.value.trim();
      if (!query) return show([], "", "");
      status.textContent = "Searching…";
      timer = setTimeout(search, DEBOUNCE_MS, query);
    }

    function go(index) {
      const href = list.children[index]?.querySelector("a")?.href;
      if (!href) return select(index);
      dialog.close();
      location.href = href;
    }

    const keys = {
      ArrowDown: () => move(1),
      ArrowUp: () => move(-1),
      Enter: () => go(active < 0 ? 0 : active),
      Escape: () => close(),  // handled here: a type=search box would only clear itself
    };

    function onKey(event) {
      const action = !event.isComposing && keys[event.key];
      if (!action) return;
      event.preventDefault();
      action();
    }

    function open() {
      if (!dialog.open) {
        returnTo = document.activeElement;  // down into shadow roots, to the element itself
        while (returnTo?.shadowRoot?.activeElement) returnTo = returnTo.shadowRoot.activeElement;
        dialog.showModal();
      }
      input.focus();
      input.select();
    }

    function close() {
      dialog.close();  // nothing happens if it is closed already
    }

    function isTyping(event) {
      const node = event.composedPath()[0];
      return node instanceof HTMLElement
        && (node.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(node.tagName));
    }

    function onGlobalKey(event) {
      if (event.defaultPrevented || event.isComposing || event.altKey) return;
      if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "k") {
        event.preventDefault();
        dialog.open ? close() : open();
      } else if (event.key === "/" && !event.ctrlKey && !event.metaKey && !dialog.open && !isTyping(event)) {
        event.preventDefault();
        open();
      }
    }

    input.addEventListener("input", onInput);
    input.addEventListener("keydown", onKey);
    root.querySelector(".close").addEventListener("click", close);
    dialog.addEventListener("close", () => returnTo?.isConnected && returnTo.focus?.({ preventScroll: true }));
    dialog.addEventListener("click", (event) => {
      if (event.target === dialog) close();  // the backdrop: .box covers the whole dialog
      else if (event.target.closest("a") && !event.ctrlKey && !event.metaKey && !event.shiftKey) close();
    });
    // mousemove, not mouseover: the list scrolling under a resting pointer must not steal the selection
    list.addEventListener("mousemove", (event) => {
      const li = event.target.closest("li");
      if (li && li !== list.children[active]) select([...list.children].indexOf(li), false);
    });
    document.addEventListener("keydown", onGlobalKey);

    // In the page's own element the button is the blog's to style; floating, it is ours.
    const target = script.dataset.target && document.querySelector(script.dataset.target);
    const button = element("button", target ? "ragserver-search-button" : "launcher", "Search");
    button.type = "button";
    button.setAttribute("aria-keyshortcuts", mac ? "Meta+K" : "Control+K");
    button.addEventListener("click", open);
    if (!target) button.append(" ", element("kbd", "", shortcut));
    (target || root).append(button);
    document.body.append(host);
    return { open, close };
  }

  /** A list of links to posts ({title, url}), or null for none. */
  function postList(posts, className) {
    const items = (Array.isArray(posts) ? posts : []).map((item) => {
      const href = resultHref(item.url, "");
      const link = element(href ? "a" : "span", "", item.title || item.url || "Untitled");
      if (href) link.href = href;
      const li = element("li");
      li.append(link);
      return li;
    });
    if (!items.length) return null;
    const list = element("ul", className);
    list.append(...items);
    return list;
  }

  /** Fill a [data-ragserver-related] element with links to the posts related to its post, the
   *  posts near it on the server's map of the blog, and its topic there. */
  async function related(slot) {
    const post = slot.dataset.ragserverRelated || location.href.split("#")[0];
    const n = slot.dataset.n || 5;
    try {
      const response = await fetch(`${endpoint}/api/related?url=${encodeURIComponent(post)}&n=${encodeURIComponent(n)}`);
      const body = await response.json();
      if (!response.ok) throw new Error(body.error);
      const similar = postList(body.related, "ragserver-related-posts");
      const nearby = postList(body.nearby, "ragserver-nearby-posts");
      if (!similar && !nearby) return;
      const parts = [];
      if (similar) parts.push(element("h2", "", slot.dataset.heading || "Related posts"), similar);
      if (nearby) parts.push(element("h3", "", "Nearby on the map"), nearby);
      // The topic's link is a path on this server, resolved against the endpoint as the Ask link is.
      const topic = body.topic && resultHref(new URL(body.topic.url, `${endpoint}/`).href, "");
      if (topic) {
        const link = Object.assign(element("a", "", body.topic.label || "Untitled"), { href: topic });
        const line = element("p", "ragserver-topic", "Topic: ");
        line.append(link);
        parts.push(line);
      }
      slot.classList.add("ragserver-related");
      slot.replaceChildren(...parts);
    } catch (error) {
      console.info(`ragserver: no related posts for ${post}: ${error.message || error}`);
    }
  }

  const api = {};
  window.ragserverSearch = api;
  const start = () => {
    Object.assign(api, init());
    document.querySelectorAll("[data-ragserver-related]").forEach(related);
  };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
