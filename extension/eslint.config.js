// ESLint 9 flat config: plain browser JavaScript, no bundler.  `npm ci && npx eslint .`
import js from "@eslint/js";
import globals from "globals";

export default [
  { ignores: ["node_modules/", "dist/"] },
  js.configs.recommended,
  {
    languageOptions: {
      ecmaVersion: 2023,
      sourceType: "module",
      globals: { ...globals.browser, ...globals.webextensions },
    },
    rules: {
      "no-unused-vars": ["error", { argsIgnorePattern: "^_", caughtErrors: "none" }],
      "no-var": "error",
      "prefer-const": "error",
      eqeqeq: ["error", "always", { null: "ignore" }],
      "no-implicit-globals": "error",
      "no-console": ["error", { allow: ["warn", "error"] }],
    },
  },
  {
    // The service worker (an ES module; no DOM, no window).
    files: ["background.js", "settings.js"],
    languageOptions: { globals: { ...globals.serviceworker, ...globals.webextensions } },
  },
  {
    // Content scripts are classic scripts, injected into every page.
    files: ["content.js"],
    languageOptions: { sourceType: "script" },
  },
  {
    files: ["eslint.config.js"],
    languageOptions: { globals: { ...globals.node } },
  },
];
