// Size each caught email's frame to the email, so the whole of it shows with no
// scrollbar of its own. The frame runs no script (its sandbox has no allow-scripts);
// allow-same-origin only lets this page measure it.
"use strict";
for (const frame of document.querySelectorAll("iframe.mail")) {
  const fit = () => {
    const doc = frame.contentDocument;
    if (!doc || !doc.documentElement) return;
    frame.style.height = "0px"; // measure the content, not the frame's own height
    const borders = frame.offsetHeight - frame.clientHeight;
    frame.style.height = `${doc.documentElement.scrollHeight + borders}px`;
  };
  frame.addEventListener("load", fit);
  window.addEventListener("resize", fit);
  if (frame.contentDocument && frame.contentDocument.readyState === "complete") fit();
}
