// The version string. esbuild defines __RAPD_VERSION__ at bundle time (from
// package.json and the git commit); running from source says so.

declare const __RAPD_VERSION__: string | undefined;

export const RAPD_VERSION: string = typeof __RAPD_VERSION__ === 'string' ? __RAPD_VERSION__ : '0.0.0-source';
