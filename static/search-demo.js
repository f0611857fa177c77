// Put this server's address into the tag, so it can be pasted as it is.
document.getElementById("snippet").textContent =
  `<script src="${location.origin}/static/ragserver-search.js" data-endpoint="${location.origin}" defer></` + `script>`;
