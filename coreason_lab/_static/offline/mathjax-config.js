// MathJax 3's configuration for the exported page, read by tex-svg-full.js when it loads: the
// delimiters and options JupyterLab and nbconvert's MathJax 2 configuration use ($…$, \(…\),
// $$…$$, \[…\], AMS numbering, environments outside math mode) and SVG output, whose glyphs
// travel in the script (no font files to fetch). Everything the page typesets is in the file;
// only the menu's accessibility explorer, if a reader turns it on, would fetch more.
window.MathJax = {
  tex: {
    inlineMath: [["$", "$"], ["\\(", "\\)"]],
    displayMath: [["$$", "$$"], ["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
    tags: "ams",
  },
  svg: { fontCache: "global" },
};
