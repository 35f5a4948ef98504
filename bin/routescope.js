#!/usr/bin/env node
'use strict';
// The `routescope` CLI; the implementation is bundled into dist/cli.js by tools/build.mjs.
const path = require('node:path');
const fs = require('node:fs');
const cli = path.join(__dirname, '..', 'dist', 'cli.js');
if (!fs.existsSync(cli)) {
  process.stderr.write('routescope: the CLI is not built (dist/cli.js is missing): run npm ci\n');
  process.exit(1);
}
require(cli).main(process.argv);
