// Test-only: React and ReactDOM (CommonJS on npm) as one ES module for the browser test
// of react.mjs, bundled by esbuild in development mode (StrictMode double-mounts there).
import React from "react";
import { createRoot } from "react-dom/client";

export default React;
export const { StrictMode, createElement, useCallback, useEffect, useMemo, useRef, useState } = React;
export { createRoot };
