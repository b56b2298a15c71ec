// The control API server and the `swarm` CLI, end to end over a real unix socket, with in-memory handlers
// standing in for the manager.
import { linkSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { request } from 'node:http';
import { createServer as createNetServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ApiClient, ApiClientError } from '../../daemon/api/client.ts';
import { ApiError, notManager } from '../../daemon/api/errors.ts';
import type { ControlHandlers } from '../../daemon/api/handlers.ts';
import { resolveNodeRef } from '../../daemon/api/node-ref.ts';
import type { NodeUpdate } from '../../daemon/api/schemas.ts';
import { type ApiServer, MAX_BODY_BYTES, startApiServer } from '../../daemon/api/server.ts';
import type { JoinTokens, SwarmInfo, SwarmNode } from '../../daemon/api/types.ts';
import { swarmNode } from '../helpers/fixtures.ts';
import { runSwarm } from '../helpers/swarm-cli.ts';

function makeNode(id: string, hostname: string, overrides: Partial<SwarmNode> = {}): SwarmNode {
  return swarmNode(id, hostname, { addresses: [`/ip4/10.0.0.${hostname.length}/tcp/4242`], version: 7, ...overrides });
}

const MGR1 = 'abc123def4567890aaaaaaaaaaaaaaaa';
const MGR2 = 'abc999def4567890bbbbbbbbbbbbbbbb';
const WORKER = 'f00dbeef00000000cccccccccccccccc';

/** Fake manager: a few nodes in memory, every call recorded. */
class FakeHandlers implements ControlHandlers {
  nodes: SwarmNode[] = [];
  tokens: JoinTokens = { worker: 'SWMTKN-1-worker-aaa', manager: 'SWMTKN-1-manager-bbb' };
  calls: { method: string; args: unknown[] }[] = [];
  failInfoWith: Error | undefined;

  reset(): void {
    this.calls = [];
    this.failInfoWith = undefined;
    this.nodes = [
      makeNode(MGR1, 'mgr-1', {
        role: 'manager',
        managerStatus: { leader: true, reachability: 'reachable', raftRole: 'voter' },
      }),
      makeNode(MGR2, 'mgr-2', {
        role: 'manager',
        managerStatus: { leader: false, reachability: 'unreachable', raftRole: 'voter' },
        status: { state: 'down', message: 'heartbeat failure', since: '2026-01-02T00:00:00.000Z' },
      }),
      makeNode(WORKER, 'worker-1', { availability: 'drain', labels: { old: 'x' } }),
    ];
  }

  #record(method: string, ...args: unknown[]): void {
    this.calls.push({ method, args });
  }

  async info(): Promise<SwarmInfo> {
    this.#record('info');
    if (this.failInfoWith) throw this.failInfoWith;
    return {
      nodeId: MGR1,
      clusterId: 'cluster-1',
      role: 'manager',
      isLeader: true,
      leaderNodeId: MGR1,
      managers: 2,
      nodes: 3,
      caFingerprint: 'sha256:abcd',
      dataDir: '/var/lib/swarmd',
      listenAddrs: ['/ip4/127.0.0.1/tcp/4242', '/ip4/10.0.0.5/tcp/4242'],
      meshEncryption: 'noise',
      raft: { term: 3, commit: 42, applied: 42 },
    };
  }
  async listNodes(): Promise<SwarmNode[]> {
    this.#record('listNodes');
    return this.nodes;
  }
  async getNode(ref: string): Promise<SwarmNode> {
    this.#record('getNode', ref);
    return resolveNodeRef(this.nodes, ref);
  }
  async updateNode(ref: string, update: NodeUpdate): Promise<SwarmNode> {
    this.#record('updateNode', ref, update);
    return resolveNodeRef(this.nodes, ref);
  }
  async promoteNode(ref: string): Promise<SwarmNode> {
    this.#record('promoteNode', ref);
    return resolveNodeRef(this.nodes, ref);
  }
  async demoteNode(ref: string): Promise<SwarmNode> {
    this.#record('demoteNode', ref);
    if (ref === 'worker-1') throw notManager();
    return resolveNodeRef(this.nodes, ref);
  }
  async removeNode(ref: string, options: { force: boolean }): Promise<void> {
    this.#record('removeNode', ref, options);
    resolveNodeRef(this.nodes, ref);
  }
  async joinTokens(): Promise<JoinTokens> {
    this.#record('joinTokens');
    return this.tokens;
  }
  async rotateJoinToken(request: { role: 'worker' | 'manager' }): Promise<JoinTokens> {
    this.#record('rotateJoinToken', request);
    this.tokens = { ...this.tokens, [request.role]: `${this.tokens[request.role]}-rotated` };
    return this.tokens;
  }
  async leave(request: { force: boolean }): Promise<void> {
    this.#record('leave', request);
  }
}

interface RawResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

/** A request with exactly these bytes, bypassing the client's own encoding. */
function rawRequest(
  socketPath: string,
  method: string,
  path: string,
  body?: string | Buffer,
  headers: Record<string, string> = { 'Content-Type': 'application/json' },
): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, method, path, headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () =>
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }),
      );
    });
    req.on('error', reject);
    req.end(body);
  });
}

let dir: string;
let socketPath: string;
let server: ApiServer;
const handlers = new FakeHandlers();
const logged: { message: string; fields?: Record<string, unknown> }[] = [];

function swarm(args: string[], env: Record<string, string | undefined> = {}) {
  return runSwarm(socketPath, args, env);
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'swarm-api-'));
  socketPath = join(dir, 'swarmd.sock');
  server = await startApiServer({
    socketPath,
    handlers,
    log: { error: (message, fields) => logged.push({ message, fields }) },
  });
});

afterAll(async () => {
  await server?.close();
  rmSync(dir, { recursive: true, force: true });
});

beforeEach(() => {
  handlers.reset();
  logged.length = 0;
});

describe('swarm node ls', () => {
  it('prints a docker-like table, sorted by hostname, marking this node with *', async () => {
    const { code, stdout, stderr } = await swarm(['node', 'ls']);
    expect(stderr).toBe('');
    expect(code).toBe(0);
    expect(stdout).toBe(
      [
        'ID               HOSTNAME   STATUS   AVAILABILITY   MANAGER STATUS   ENGINE VERSION',
        'abc123def456 *   mgr-1      Ready    Active         Leader           0.1.0',
        'abc999def456     mgr-2      Down     Active         Unreachable      0.1.0',
        'f00dbeef0000     worker-1   Ready    Drain                           0.1.0',
        '',
      ].join('\n'),
    );
  });

  it('prints JSON with --format json, given before or after the command', async () => {
    for (const args of [
      ['node', 'ls', '--format', 'json'],
      ['--format=json', 'node', 'ls'],
      ['node', '--format', 'json', 'ls'],
    ]) {
      const { code, stdout } = await swarm(args);
      expect(code).toBe(0);
      const parsed = JSON.parse(stdout) as SwarmNode[];
      expect(parsed.map((node) => node.id)).toEqual([MGR1, MGR2, WORKER]);
      expect(parsed[2]).toEqual(handlers.nodes[2]);
    }
  });

  it('prints only IDs with -q', async () => {
    const { stdout } = await swarm(['node', 'ls', '-q']);
    expect(stdout).toBe(`${MGR1}\n${MGR2}\n${WORKER}\n`);
  });
});

describe('swarm node inspect', () => {
  it('finds a node by a unique ID prefix or by hostname', async () => {
    const byPrefix = await swarm(['node', 'inspect', 'f00d']);
    expect(byPrefix.code).toBe(0);
    expect(JSON.parse(byPrefix.stdout)).toEqual([handlers.nodes[2]]);
    const byHostname = await swarm(['node', 'inspect', 'mgr-2', MGR1]);
    expect((JSON.parse(byHostname.stdout) as SwarmNode[]).map((node) => node.id)).toEqual([MGR2, MGR1]);
  });

  it('refuses an ambiguous prefix with 409, and reports missing nodes while printing the others', async () => {
    const ambiguous = await swarm(['node', 'inspect', 'abc']);
    expect(ambiguous.code).toBe(1);
    expect(ambiguous.stderr).toBe('swarm: ambiguous prefix: abc matches 2 nodes; give more of the ID\n');
    const status = await new ApiClient(socketPath).getNode('abc').catch((error: ApiClientError) => error.status);
    expect(status).toBe(409);

    const partly = await swarm(['node', 'inspect', 'nope', 'worker-1']);
    expect(partly.code).toBe(1);
    expect(partly.stderr).toBe('swarm: no such node: nope\n');
    expect(JSON.parse(partly.stdout)).toEqual([handlers.nodes[2]]);
  });

  it('prints a human-readable summary with --pretty', async () => {
    const { code, stdout } = await swarm(['node', 'inspect', '--pretty', 'worker-1']);
    expect(code).toBe(0);
    expect(stdout).toMatch(new RegExp(`^ID: +${WORKER}$`, 'm'));
    expect(stdout).toMatch(/^Availability: +Drain$/m);
    expect(stdout).toContain('Labels:\n  - old=x');
    expect(stdout).toMatch(/^Memory: +8GiB$/m);
  });
});

describe('swarm node update, promote, demote, rm', () => {
  it('sends the parsed changes with the version it read', async () => {
    const { code, stdout, stderr } = await swarm([
      'node',
      'update',
      '--availability',
      'pause',
      '--label-add',
      'zone=eu-west=1',
      '--label-add',
      'gpu',
      '--label-rm',
      'old',
      'f00d',
    ]);
    expect(stderr).toBe('');
    expect(code).toBe(0);
    expect(stdout).toBe('f00d\n');
    expect(handlers.calls).toEqual([
      { method: 'getNode', args: ['f00d'] },
      {
        method: 'updateNode',
        args: [
          WORKER,
          { version: 7, availability: 'pause', labelAdd: { zone: 'eu-west=1', gpu: '' }, labelRm: ['old'] },
        ],
      },
    ]);
  });

  it.each([
    [['--availability', 'bogus'], 'invalid --availability "bogus": must be one of: active, pause, drain'],
    [['--label-add', '=x'], 'invalid --label-add "=x": expected key=value'],
    [['--label-add', 'bad key=1'], 'invalid --label-add "bad key": invalid label key'],
    [['--label-add', `k=${'v'.repeat(257)}`], 'invalid --label-add "k": must be at most 256 characters'],
    [['--label-rm=-x'], 'invalid --label-rm "-x": invalid label key'],
    [['--label-rm', '-x'], 'flag --label-rm needs a value; write --label-rm=VALUE for one that starts with "-"'],
    [['--label-add', 'a=1', '--label-rm', 'a'], 'invalid --label-rm "a": label a is both added and removed'],
    [['--role', 'boss'], 'invalid --role "boss": must be one of: manager, worker'],
    [['--bogus'], 'unknown flag --bogus for "swarm node update"'],
    [['--availability'], 'flag --availability needs a value'],
  ])('rejects %j with exit 2 before sending anything', async (flags, message) => {
    const { code, stderr } = await swarm(['node', 'update', 'f00d', ...flags]);
    expect(code).toBe(2);
    expect(stderr).toContain(`swarm: ${message}`);
    expect(stderr.trimEnd().split('\n')).toHaveLength(1);
    expect(handlers.calls).toEqual([]);
  });

  it('rejects missing and extra arguments, unknown commands and bad global flags with exit 2', async () => {
    const cases: [string[], string][] = [
      [['node', 'update'], '"swarm node update" requires exactly 1 argument'],
      [['node', 'update', 'a', 'b'], '"swarm node update" accepts at most 1 argument'],
      [['node', 'rm'], '"swarm node rm" requires at least 1 argument'],
      [['info', 'x'], '"swarm info" takes no arguments'],
      [['nodes', 'ls'], 'unknown command "nodes" for "swarm"'],
      [['node', 'frob'], 'unknown command "frob" for "swarm node"'],
      [['--bogus', 'info'], 'unknown flag --bogus for "swarm"'],
      [['--format', 'xml', 'info'], 'invalid --format "xml": must be one of: table, json'],
      [['join-token', 'admin'], 'unknown role "admin": must be worker or manager'],
    ];
    for (const [args, message] of cases) {
      const { code, stderr } = await swarm(args);
      expect({ args, code }).toEqual({ args, code: 2 });
      expect(stderr).toContain(`swarm: ${message}`);
    }
    expect(handlers.calls).toEqual([]);
  });

  it('promotes, demotes and removes each node named, reporting failures without stopping', async () => {
    expect((await swarm(['node', 'promote', 'worker-1'])).stdout).toBe(
      'Node worker-1 promoted to a manager in the swarm.\n',
    );
    const demote = await swarm(['node', 'demote', 'worker-1', 'mgr-2']);
    expect(demote.code).toBe(1);
    expect(demote.stderr).toBe('swarm: this node is not a manager; run this command on a manager node\n');
    expect(demote.stdout).toBe('Manager mgr-2 demoted in the swarm.\n');
    const rm = await swarm(['node', 'rm', '--force', 'f00d', 'mgr-2']);
    expect(rm.code).toBe(0);
    expect(rm.stdout).toBe('f00d\nmgr-2\n');
    expect(handlers.calls.filter((call) => call.method === 'removeNode')).toEqual([
      { method: 'removeNode', args: ['f00d', { force: true }] },
      { method: 'removeNode', args: ['mgr-2', { force: true }] },
    ]);
  });
});

describe('swarm join-token and info', () => {
  it('prints the join command with a routable manager address, or only the token with -q', async () => {
    const worker = await swarm(['join-token', 'worker']);
    expect(worker.code).toBe(0);
    expect(worker.stdout).toBe(
      'To add a worker to this swarm, run the following command:\n\n' +
        '    swarmd join --token SWMTKN-1-worker-aaa /ip4/10.0.0.5/tcp/4242\n',
    );
    expect((await swarm(['join-token', '-q', 'manager'])).stdout).toBe('SWMTKN-1-manager-bbb\n');
  });

  it('rotates a token and shows the new one', async () => {
    const rotated = await swarm(['join-token', '--rotate', 'manager']);
    expect(rotated.code).toBe(0);
    expect(rotated.stdout).toBe(
      'Successfully rotated manager join token.\n\n' +
        'To add a manager to this swarm, run the following command:\n\n' +
        '    swarmd join --token SWMTKN-1-manager-bbb-rotated /ip4/10.0.0.5/tcp/4242\n',
    );
    expect(handlers.calls[0]).toEqual({ method: 'rotateJoinToken', args: [{ role: 'manager' }] });
  });

  it('prints info as fields or JSON', async () => {
    const table = await swarm(['info']);
    expect(table.code).toBe(0);
    expect(table.stdout).toMatch(new RegExp(`^Node ID: +${MGR1}$`, 'm'));
    expect(table.stdout).toContain('Listen Addresses:\n  /ip4/127.0.0.1/tcp/4242\n  /ip4/10.0.0.5/tcp/4242\n');
    expect(JSON.parse((await swarm(['info', '--format', 'json'])).stdout)).toEqual(await handlers.info());
  });

  it('answers --help at every level with exit 0', async () => {
    const top = await swarm(['--help']);
    expect(top.code).toBe(0);
    expect(top.stdout).toContain('Usage:  swarm [OPTIONS] COMMAND');
    expect(top.stdout).toMatch(/join-token +Manage join tokens/);
    const group = await swarm(['node', '-h']);
    expect(group.stdout).toMatch(/update +Update a node/);
    const leaf = await swarm(['node', 'update', '--help']);
    expect(leaf.code).toBe(0);
    expect(leaf.stdout).toContain('Usage:  swarm node update [OPTIONS] NODE');
    expect(leaf.stdout).toMatch(/--label-add key=value +Add or update a node label \(repeatable\)/);
    expect(handlers.calls).toEqual([]);
  });
});

describe('no daemon', () => {
  it('says it cannot reach swarmd, naming the socket, and exits 1', async () => {
    const missing = join(dir, 'absent.sock');
    const viaFlag = await swarm(['--host', missing, 'node', 'ls']);
    expect(viaFlag.code).toBe(1);
    expect(viaFlag.stderr).toBe(
      `swarm: cannot reach swarmd at ${missing}: is it running? (set --host or SWARM_HOST)\n`,
    );
    const viaDataDir = await swarm(['info'], { SWARM_HOST: undefined, SWARMD_DATA_DIR: join(dir, 'data') });
    expect(viaDataDir.code).toBe(1);
    expect(viaDataDir.stderr).toContain(`cannot reach swarmd at ${join(dir, 'data', 'swarmd.sock')}:`);
  });
});

describe('control API server', () => {
  it('creates the socket with mode 0660', () => {
    const stats = statSync(socketPath);
    expect(stats.isSocket()).toBe(true);
    expect(stats.mode & 0o777).toBe(0o660);
  });

  it("gives the metrics text as is, and the server's error where a node has none", async () => {
    const client = new ApiClient(socketPath);
    // These fake handlers serve no metrics: the route says so, and the client passes that on.
    const refused = await client.metrics().catch((error: ApiClientError) => error);
    expect(refused).toBeInstanceOf(ApiClientError);
    expect((refused as ApiClientError).message).toMatch(/metrics/);
    expect((refused as ApiClientError).status).toBeGreaterThanOrEqual(400);
    const withMetrics = Object.assign(Object.create(handlers) as FakeHandlers, {
      metrics: async () => ({ text: '# TYPE up gauge\nup 1\n', contentType: 'text/plain; version=0.0.4' }),
    });
    const dir = mkdtempSync(join(tmpdir(), 'swarmd-api-metrics-'));
    const other = await startApiServer({
      socketPath: join(dir, 's.sock'),
      handlers: withMetrics,
      log: { error: () => {} },
    });
    try {
      expect(await new ApiClient(join(dir, 's.sock')).metrics()).toBe('# TYPE up gauge\nup 1\n');
    } finally {
      await other.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('rejects invalid bodies with 400, naming the field', async () => {
    const client = new ApiClient(socketPath);
    const cases: [unknown, string, string][] = [
      [{ version: 1, labelAdd: { foo: 'x'.repeat(257) } }, 'labelAdd.foo', 'must be at most 256 characters'],
      [{ version: -1 }, 'version', 'must be at least 0'],
      [{ version: 1.5 }, 'version', 'must be an integer'],
      [{}, 'version', 'is required'],
      [{ version: 1, availability: 'off' }, 'availability', 'must be one of: active, pause, drain'],
      [{ version: 1, labelAdd: { 'com.example/x y': '1' } }, 'labelAdd["com.example/x y"]', 'invalid label key'],
      [{ version: 1, labelRm: ['ok', ''] }, 'labelRm[1]', 'invalid label key'],
      [{ version: 1, extra: true }, 'extra', 'unknown field'],
    ];
    for (const [body, field, message] of cases) {
      const error = await client.request('POST', `/v1/nodes/${WORKER}/update`, body).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(ApiClientError);
      expect(error).toMatchObject({ status: 400, field });
      expect((error as ApiClientError).message).toContain(`${field}: ${message}`);
    }
    const rotate = await client.request('POST', '/v1/join-tokens/rotate', { role: 'admin' }).catch((e) => e);
    expect(rotate).toMatchObject({ status: 400, field: 'role', message: 'role: must be one of: manager, worker' });
    const leave = await client.request('POST', '/v1/swarm/leave').catch((e) => e);
    expect(leave).toMatchObject({ status: 400, message: 'request body: is required' });
    const force = await client.request('DELETE', `/v1/nodes/${WORKER}?force=yes`).catch((e) => e);
    expect(force).toMatchObject({ status: 400, field: 'force' });
    expect(handlers.calls).toEqual([]);
  });

  it('answers malformed JSON with 400 saying so', async () => {
    const res = await rawRequest(socketPath, 'POST', '/v1/swarm/leave', '{"force": tru');
    expect(res.status).toBe(400);
    expect(res.headers['content-type']).toBe('application/json');
    expect(JSON.parse(res.body).error).toMatch(/^malformed JSON in request body: /);
    const text = await rawRequest(socketPath, 'POST', '/v1/swarm/leave', 'force', { 'Content-Type': 'text/plain' });
    expect(text.status).toBe(415);
  });

  it('answers unknown routes with 404 and wrong methods with 405', async () => {
    const unknown = await rawRequest(socketPath, 'GET', '/v1/secrets');
    expect(unknown.status).toBe(404);
    expect(JSON.parse(unknown.body)).toEqual({ error: 'no such endpoint: GET /v1/secrets' });
    expect((await rawRequest(socketPath, 'GET', '/v2/info')).status).toBe(404);
    const wrong = await rawRequest(socketPath, 'DELETE', '/v1/info');
    expect(wrong.status).toBe(405);
    expect(wrong.headers.allow).toBe('GET');
    const nodeWrong = await rawRequest(socketPath, 'PUT', `/v1/nodes/${WORKER}`);
    expect(nodeWrong.status).toBe(405);
    expect(nodeWrong.headers.allow).toBe('GET, DELETE');
  });

  it('refuses bodies over 1 MiB with 413', async () => {
    const big = Buffer.alloc(MAX_BODY_BYTES + 1, 0x20);
    const declared = await rawRequest(socketPath, 'POST', '/v1/swarm/leave', big);
    expect(declared.status).toBe(413);
    expect(JSON.parse(declared.body).error).toContain('larger than 1048576 bytes');
    // Chunked: no Content-Length, so the limit is found while reading.
    const chunked = await new Promise<number>((resolve, reject) => {
      const req = request({ socketPath, method: 'POST', path: '/v1/swarm/leave', agent: false }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on('error', reject);
      for (let i = 0; i < 3; i++) req.write(Buffer.alloc(512 * 1024, 0x20));
      req.end();
    });
    expect(chunked).toBe(413);
    expect((await rawRequest(socketPath, 'GET', '/v1/info')).status).toBe(200);
  });

  it('turns a plain Error from a handler into a 500, logs it, and keeps serving', async () => {
    handlers.failInfoWith = new Error('boom');
    const res = await rawRequest(socketPath, 'GET', '/v1/info');
    expect(res.status).toBe(500);
    expect(JSON.parse(res.body)).toEqual({ error: 'internal error: boom' });
    expect(logged).toHaveLength(1);
    expect(logged[0]!.message).toBe('GET /v1/info failed');
    const cli = await swarm(['info']);
    expect(cli).toMatchObject({ code: 1, stderr: 'swarm: internal error: boom\n' });

    handlers.failInfoWith = new ApiError(503, 'not now');
    expect(await rawRequest(socketPath, 'GET', '/v1/info')).toMatchObject({
      status: 503,
      body: '{"error":"not now"}\n',
    });
    handlers.failInfoWith = undefined;
    expect((await rawRequest(socketPath, 'GET', '/v1/info')).status).toBe(200);
    expect(logged).toHaveLength(2);
  });

  it('decodes node references in the path', async () => {
    const res = await rawRequest(socketPath, 'GET', `/v1/nodes/${encodeURIComponent('worker-1')}`);
    expect(res.status).toBe(200);
    expect((await rawRequest(socketPath, 'GET', '/v1/nodes/%E0%A4%A')).status).toBe(400);
  });

  it('refuses to start on a socket another daemon answers on, and replaces a stale one', async () => {
    await expect(startApiServer({ socketPath, handlers })).rejects.toThrow(
      `another swarmd is already serving on control socket ${socketPath}`,
    );
    // A hard link to a listening socket's inode stays behind, dead, once that listener closes: a stale socket.
    const stale = join(dir, 'stale.sock');
    const origin = join(dir, 'origin.sock');
    const listener = createNetServer();
    await new Promise<void>((resolve) => listener.listen(origin, resolve));
    linkSync(origin, stale);
    await new Promise<void>((resolve) => listener.close(() => resolve()));
    const second = await startApiServer({ socketPath: stale, handlers });
    try {
      expect(await new ApiClient(stale).joinTokens()).toEqual(handlers.tokens);
    } finally {
      await second.close();
    }
    expect(() => statSync(stale)).toThrow();
  });
});
