// Debian packages the dev tools need, installed only when missing, never upgrading what is installed, and saying
// what they add and why before they do (npm start / npm test may run as root on a fresh machine).
import { spawnSync } from 'node:child_process';

function log(message) {
  console.log(`routescope: ${message}`);
}

/** The packages of `names` that dpkg does not list as installed. */
export function aptMissing(names) {
  return names.filter((name) => {
    const q = spawnSync('dpkg-query', ['-W', '-f=${Status}', name], { encoding: 'utf8' });
    return q.status !== 0 || !q.stdout.includes('install ok installed');
  });
}

/** What `apt-get install` would do, from its simulation: the packages it adds and the installed ones it upgrades. */
function aptPlan(packages) {
  const sim = spawnSync('apt-get', ['-s', 'install', '--no-install-recommends', ...packages], { encoding: 'utf8' });
  const installs = [];
  const upgrades = [];
  for (const line of (sim.stdout ?? '').split('\n')) {
    const m = /^Inst (\S+) (\[[^\]]+\] )?/.exec(line);
    if (m) (m[2] ? upgrades : installs).push(m[1]);
  }
  return { installs, upgrades };
}

function run(command, args, options) {
  const result = spawnSync(command, args, { stdio: 'inherit', ...options });
  if (result.error) throw new Error(`${command}: ${result.error.message}`);
  if (result.status !== 0) throw new Error(`${command} ${args.join(' ')} failed (${result.signal ?? `exit ${result.status}`})`);
}

/** Installs the missing ones of `names` as root (`why` says what needs them); not root: an error with the command. */
export function ensureAptPackages(names, why) {
  const missing = aptMissing(names);
  if (missing.length === 0) return;
  const command = `apt-get install -y --no-install-recommends ${missing.join(' ')}`;
  if (process.getuid?.() !== 0) throw new Error(`missing Debian packages: ${missing.join(' ')} (${why}; install them: sudo ${command})`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  log(`installing ${missing.join(' ')} with apt-get (${why}); refreshing the package lists first`);
  run('apt-get', ['update', '-qq'], { env });
  const plan = aptPlan(missing);
  log(`apt-get adds ${plan.installs.length} packages (${missing.join(' ')} and their libraries)` +
      (plan.upgrades.length ? `; their dependencies require upgrading ${plan.upgrades.join(' ')}` : '; nothing installed is upgraded'));
  run('apt-get', ['install', '-y', '-qq', '--no-install-recommends', '--no-upgrade', ...missing], { env });
}
