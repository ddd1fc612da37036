// Live parts of the page, rendered on the server, over server-sent events. EventSource reconnects
// by itself (the server asks for a second's pause); the page says when it is doing so.
"use strict";
const connection = () => document.getElementById("connection");
const events = new EventSource("/events");
events.onmessage = (event) => {
  const parts = JSON.parse(event.data);
  for (const [id, html] of Object.entries(parts)) {
    const element = document.getElementById(id);
    if (!element) continue;
    if (id === "settled-total") element.textContent = html;
    else element.innerHTML = html;
  }
  connection().textContent = "实时 live";
  connection().className = "connection live";
};
events.onerror = () => {
  connection().textContent = "重新连接中 reconnecting…";
  connection().className = "connection";
};
