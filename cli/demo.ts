// `npm run demo`: the whole product on one machine, in a few minutes, with nothing installed but Node.
// Starts a 3-node swarm (1 manager, 2 workers: separate swarmd processes on loopback, data in a temp dir),
// deploys a replicated HTTP service with a health check behind a published port on the process runtime, shows
// requests balanced over its tasks, rolls out a new version with the progress display, and stays up until
// Ctrl-C, then cleans up. Every step prints the command a person would type to do it by hand.
//
//   npm run demo              stays up until Ctrl-C
//   npm run demo -- --exit    goes through the steps and stops (what the tests run)
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { get } from 'node:http';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

const ROOT = resolve(import.meta.dirname, '..');
const SWARMD = join(ROOT, 'cli/swarmd.ts');
const SWARM = join(ROOT, 'cli/swarm.ts');
const exitWhenDone = process.argv.includes('--exit');

const dataRoot = mkdtempSync(join(tmpdir(), 'swarmd-demo-'));
const children: ChildProcess[] = [];
const say = (text: string) => process.stdout.write(`\n\x1b[1m== ${text}\x1b[0m\n`);
const show = (command: string) => process.stdout.write(`\x1b[2m$ ${command}\x1b[0m\n`);

/** A free TCP port on 127.0.0.1 (or the one preferred, when free). */
async function freePort(preferred = 0): Promise<number> {
  const tryPort = (port: number) =>
    new Promise<number | null>((done) => {
      const server = createServer();
      server.once('error', () => done(null));
      server.listen(port, '127.0.0.1', () => {
        const bound = (server.address() as { port: number }).port;
        server.close(() => done(bound));
      });
    });
  return (preferred ? await tryPort(preferred) : null) ?? (await tryPort(0))!;
}

interface DemoNode {
  name: string;
  socket: string;
  child: ChildProcess;
  output: string[];
}

function startNode(name: string, args: string[]): DemoNode {
  const dataDir = join(dataRoot, name);
  // Its own process group: a Ctrl-C in the terminal reaches the demo, which stops the swarm in order (the
  // service first, so its tasks go too), not the daemons all at once.
  const child = spawn(process.execPath, [SWARMD, ...args, '--data-dir', dataDir], {
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  children.push(child);
  const node: DemoNode = { name, socket: join(dataDir, 'swarmd.sock'), child, output: [] };
  const keep = (chunk: Buffer) => node.output.push(chunk.toString());
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  return node;
}

async function waitForOutput(node: DemoNode, text: string, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!node.output.join('').includes(text)) {
    if (node.child.exitCode !== null) throw new Error(`${node.name} exited:\n${node.output.join('')}`);
    if (Date.now() > deadline) throw new Error(`${node.name} did not get ready:\n${node.output.join('')}`);
    await sleep(100);
  }
}

/** Runs `swarm` against the manager; shows the command and, unless captured, its output. */
function swarm(
  manager: DemoNode,
  args: string[],
  options: { capture?: boolean; display?: string } = {},
): Promise<{ code: number; stdout: string }> {
  const capture = options.capture ?? false;
  show(options.display ?? `swarm ${args.map((a) => (/[\s$'"*]/.test(a) ? `'${a}'` : a)).join(' ')}`);
  return new Promise((done) => {
    const child = spawn(process.execPath, [SWARM, '--host', manager.socket, ...args], {
      stdio: ['ignore', capture ? 'pipe' : 'inherit', 'inherit'],
    });
    let stdout = '';
    child.stdout?.on('data', (chunk: Buffer) => {
      stdout += chunk.toString();
    });
    child.on('close', (code) => done({ code: code ?? 1, stdout }));
  });
}

function request(host: string, port: number): Promise<string> {
  return new Promise((done) => {
    const req = get({ host, port, path: '/', agent: false, timeout: 5000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        body += chunk;
      });
      res.on('end', () => done(body.trim()));
    });
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', (error) => done(`(failed: ${error.message})`));
  });
}

/** `perNode` requests to each node's published port, in turn: each node balances over every task. */
async function balanced(port: number, perNode: number): Promise<void> {
  for (const host of ['127.0.0.1', '127.0.0.2', '127.0.0.3']) {
    for (let i = 0; i < perNode; i++) {
      process.stdout.write(`  GET http://${host}:${port}/  ->  ${await request(host, port)}\n`);
    }
  }
}

/** The service's program: answers with its version and where it runs, and /healthz for its health check. */
const WEB = [
  "require('node:http').createServer((req, res) => res.end(req.url === '/healthz' ? 'ok' :",
  "  'hello from ' + process.env.VERSION + ' (task port ' + process.env.PORT + ', pid ' + process.pid + ')'))",
  "  .listen(Number(process.env.PORT), '127.0.0.1');",
].join('\n');

/** Tasks outlive their daemon (a restarted swarmd re-attaches them): each carries this mark, for the last resort. */
const TASK_MARK = `swarmd-demo-task-${process.pid}`;

let manager: DemoNode | undefined;
let cleaning: Promise<void> | undefined;

/** Removes the service (its tasks stop), stops the daemons, and deletes the data; once, whoever asks. */
function cleanUp(): Promise<void> {
  cleaning ??= (async () => {
    say('Stopping the swarm and removing its data');
    if (manager && manager.child.exitCode === null) {
      await swarm(manager, ['service', 'rm', 'web'], { capture: true });
      await sleep(3000);
    }
    for (const child of children) if (child.exitCode === null) child.kill('SIGTERM');
    await sleep(1500);
    for (const child of children) if (child.exitCode === null) child.kill('SIGKILL');
    spawnSync('pkill', ['-KILL', '-f', TASK_MARK]);
    rmSync(dataRoot, { recursive: true, force: true });
  })();
  return cleaning;
}

async function main(): Promise<void> {
  const ports = [await freePort(), await freePort(), await freePort()];
  const published = await freePort(8080);

  say('Starting a 3-node swarm on this machine: 1 manager, 2 workers (separate processes, data in a temp dir)');
  show(`swarmd init --listen-addr 127.0.0.1:${ports[0]} --ingress-host 127.0.0.1 --data-dir ${dataRoot}/manager`);
  manager = startNode('manager', ['init', '--listen-addr', `127.0.0.1:${ports[0]}`, '--ingress-host', '127.0.0.1']);
  await waitForOutput(manager, 'swarmd join --token');
  const token = (await swarm(manager, ['join-token', '-q', 'worker'], { capture: true })).stdout.trim();
  for (const [i, name] of ['worker1', 'worker2'].entries()) {
    const args = ['join', '--token', token, '--listen-addr', `127.0.0.1:${ports[i + 1]}`];
    const ingress = ['--ingress-host', `127.0.0.${i + 2}`];
    show(
      `swarmd ${[...args.slice(0, 2), 'SWMTKN-1-...', ...args.slice(3), ...ingress].join(' ')} 127.0.0.1:${ports[0]}`,
    );
    const node = startNode(name, [...args, ...ingress, `127.0.0.1:${ports[0]}`]);
    await waitForOutput(node, 'joined a swarm');
  }
  await sleep(1500);
  await swarm(manager, ['node', 'ls']);

  say(
    `Deploying "web": 3 replicas of a small HTTP server, health-checked, published on port ${published} of every node`,
  );
  const create = `service create --name web --replicas 3 --env VERSION=v1 --publish ${published}:80 --health-http /healthz --health-interval 1s --update-order start-first`;
  await swarm(manager, [...create.split(' '), '--', process.execPath, '-e', WEB, TASK_MARK], {
    display: `swarm ${create} -- node -e "$WEB"   # WEB: a 3-line HTTP server, see cli/demo.ts`,
  });
  await sleep(2000);
  await swarm(manager, ['service', 'ps', 'web']);

  say('Every node answers on the published port; each connection goes to a healthy task, anywhere in the swarm');
  await balanced(published, 3);

  say('A rolling update to v2: one task at a time, the new one up and healthy before the old one stops');
  await swarm(manager, ['service', 'update', '--env-add', 'VERSION=v2', 'web']);
  await balanced(published, 1);
  await swarm(manager, ['service', 'ps', 'web']);

  say('To go on by hand, in another terminal:');
  process.stdout.write(
    `  export SWARM_HOST=${manager.socket}\n  npm run swarm -- service ls\n  npm run swarm -- service rollback web\n  curl http://127.0.0.1:${published}/\n`,
  );
  if (exitWhenDone) return;
  say('The swarm stays up until Ctrl-C');
  await new Promise<void>(() => {}); // until a signal: its handler cleans up and exits
}

// Ctrl-C (or a kill) at any step stops the swarm cleanly.
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => void cleanUp().then(() => process.exit(signal === 'SIGINT' ? 130 : 143)));
}
main().then(
  async () => {
    await cleanUp();
    process.exit(0);
  },
  async (error: Error) => {
    process.stderr.write(`demo failed: ${error.message}\n`);
    await cleanUp();
    process.exit(1);
  },
);
