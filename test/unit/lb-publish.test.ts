// Published ports in the spec: the --publish flag's two syntaxes, --publish-add/--publish-rm on update, what the
// schema refuses, and the endpoint table the leader sends and workers validate.
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { specFromFlags } from '../../cli/commands/service-flags.ts';
import { updatedSpec } from '../../cli/commands/service-update.ts';
import { portLabel, type Service, type Task } from '../../daemon/api/services.ts';
import { validateTable } from '../../daemon/lb/table.ts';
import { buildEndpointTable, EndpointTableCache } from '../../daemon/manager/endpoint-table.ts';
import { runSwarm } from '../helpers/swarm-cli.ts';

// No daemon listens there: a refused flag must fail before any request (exit 2).
const NO_DAEMON = join('/nonexistent', 'swarmd.sock');

const create = (...flags: string[]) => specFromFlags({ publish: flags }, ['/bin/true'], {});

describe('--publish', () => {
  it('reads the short and the long form, with defaults', () => {
    expect(create('8080:80', '9000:9001/tcp').endpoint).toEqual({
      ports: [
        { published: 8080, target: 80, protocol: 'tcp', mode: 'ingress', proxyProtocol: false },
        { published: 9000, target: 9001, protocol: 'tcp', mode: 'ingress', proxyProtocol: false },
      ],
      algorithm: 'round-robin',
    });
    expect(create('published=8080,target=80,mode=host,proxy-protocol=v2').endpoint.ports).toEqual([
      { published: 8080, target: 80, protocol: 'tcp', mode: 'host', proxyProtocol: true },
    ]);
    // UDP: a port per protocol, so 53/tcp and 53/udp go together.
    expect(create('53:5353/udp', '53:5353', 'published=54,target=54,protocol=UDP,mode=host').endpoint.ports).toEqual([
      { published: 53, target: 5353, protocol: 'udp', mode: 'ingress', proxyProtocol: false },
      { published: 53, target: 5353, protocol: 'tcp', mode: 'ingress', proxyProtocol: false },
      { published: 54, target: 54, protocol: 'udp', mode: 'host', proxyProtocol: false },
    ]);
    expect(specFromFlags({ 'lb-algorithm': 'p2c' }, ['/bin/true'], {}).endpoint).toEqual({
      ports: [],
      algorithm: 'p2c',
    });
  });

  it.each([
    [['--publish', 'x'], 'invalid --publish "x": expected PUBLISHED:TARGET[/tcp|/udp]'],
    [['--publish', '8080:80/sctp'], 'invalid --publish "8080:80/sctp": SCTP is not supported by the load balancer'],
    [['--publish', 'published=53,protocol=quic'], 'unknown protocol "quic": must be tcp or udp'],
    [['--publish', 'published=53,protocol=udp,proxy-protocol=v2'], 'PROXY protocol is for tcp ports only'],
    [['--publish', '53:53/udp', '--publish', '53:54/udp'], 'port 53/udp is published twice'],
    [['--publish', '70000:80'], 'invalid --publish "70000:80": must be a port number (1-65535)'],
    [['--publish', 'published=8080,mode=bridge'], 'unknown mode "bridge": must be ingress or host'],
    [['--publish', 'published=8080,proxy-protocol=v1'], 'unknown proxy-protocol "v1"'],
    [['--publish', 'target=80'], 'published is required'],
    [['--publish', '8080:80', '--publish', '8080:81'], 'invalid --publish "8080:81": port 8080/tcp is published twice'],
    [['--lb-algorithm', 'random'], 'invalid --lb-algorithm "random": unknown load balancing algorithm'],
  ])('refuses %j naming the flag, before any request', async (flags, message) => {
    const { code, stderr } = await runSwarm(NO_DAEMON, ['service', 'create', ...flags, '/bin/true']);
    expect(stderr).toContain(message);
    expect(stderr).toMatch(/^swarm: invalid --/);
    expect(code).toBe(2);
  });

  it('--publish-add adds or replaces, --publish-rm removes by published port and protocol', () => {
    const current = create('8080:80', '9000:90');
    const spec = updatedSpec(current, { 'publish-add': ['9000:91', '7000:70'], 'publish-rm': ['8080'] });
    expect(spec.endpoint.ports.map((p) => `${p.published}:${p.target}`)).toEqual(['9000:91', '7000:70']);
    expect(() => updatedSpec(current, { 'publish-rm': ['eighty'] })).toThrow(/invalid --publish-rm "eighty"/);
    // A port per protocol: adding 9000/udp keeps 9000/tcp; removing 9000/udp keeps it too; 9000 alone removes both.
    const both = updatedSpec(current, { 'publish-add': ['9000:90/udp'] });
    expect(both.endpoint.ports.map(portLabel)).toEqual(['8080/tcp', '9000/tcp', '9000/udp']);
    expect(updatedSpec(both, { 'publish-rm': ['9000/udp'] }).endpoint.ports.map(portLabel)).toEqual([
      '8080/tcp',
      '9000/tcp',
    ]);
    expect(updatedSpec(both, { 'publish-rm': ['9000'] }).endpoint.ports.map(portLabel)).toEqual(['8080/tcp']);
    expect(() => updatedSpec(both, { 'publish-rm': ['9000/sctp'] })).toThrow(/invalid --publish-rm "9000\/sctp"/);
    expect(() => updatedSpec(current, { 'publish-add': ['1:2/udp,proxy'] })).toThrow(/--publish-add/);
  });
});

describe('endpoint table', () => {
  const at = '2025-01-01T00:00:00.000Z';
  const spec = create('published=8080,target=80,proxy-protocol=v2');
  const service: Service = {
    id: 's1',
    spec: { ...spec, name: 'web' },
    specVersion: 1,
    previousSpec: null,
    updateStatus: null,
    version: 1,
    createdAt: at,
    updatedAt: at,
  };
  const task = (id: string, over: Partial<Task>, status: Partial<Task['status']> = {}): Task => ({
    id,
    serviceId: 's1',
    serviceName: 'web',
    slot: 1,
    nodeId: 'n1',
    specVersion: 1,
    template: spec.task,
    desiredState: 'running',
    status: { state: 'running', since: at, message: '', address: `127.0.0.1:4${id.length}000`, ...status },
    devices: [],
    attempt: 0,
    publishes: true,
    version: 1,
    createdAt: at,
    updatedAt: at,
    ...over,
  });

  it('lists ready tasks with an address as endpoints, and stopping ones as draining', () => {
    const table = buildEndpointTable(
      [service],
      [
        task('a', {}),
        task('bb', { nodeId: 'n2' }),
        task('ccc', { desiredState: 'shutdown' }),
        task('dddd', {}, { state: 'starting', address: undefined }),
        task('eeeee', {}, { address: undefined }),
      ],
      (nodeId) => `peer-${nodeId}`,
    );
    expect(table).toEqual([
      {
        serviceId: 's1',
        serviceName: 'web',
        algorithm: 'round-robin',
        ports: [{ published: 8080, protocol: 'tcp', mode: 'ingress', proxyProtocol: true }],
        endpoints: [
          { taskId: 'a', nodeId: 'n1', peerId: 'peer-n1', address: '127.0.0.1:41000' },
          { taskId: 'bb', nodeId: 'n2', peerId: 'peer-n2', address: '127.0.0.1:42000' },
        ],
        draining: ['ccc'],
      },
    ]);
    // What a worker receives survives validation unchanged.
    expect(validateTable(table)).toEqual({ services: table, dropped: 0 });
  });

  it('drops what does not check out on the receiving side', () => {
    const good = buildEndpointTable([service], [task('a', {})], () => 'peer');
    const bad = [
      ...good,
      { ...good[0], algorithm: 'nope' },
      { ...good[0], ports: [{ published: 0, mode: 'ingress' }] },
      { ...good[0], ports: [{ published: 53, protocol: 'sctp', mode: 'ingress' }] },
      'junk',
    ];
    const withBadEndpoint = [{ ...good[0], endpoints: [...good[0]!.endpoints, { taskId: 'x', address: 'nowhere' }] }];
    expect(validateTable(bad)).toEqual({ services: good, dropped: 4 });
    // A leader from before UDP sends no protocol: tcp.
    const old = [{ ...good[0], ports: [{ published: 8080, mode: 'ingress', proxyProtocol: true }] }];
    expect(validateTable(old).services).toEqual(good);
    expect(validateTable(withBadEndpoint).services).toEqual(good);
    expect(validateTable({ not: 'a list' })).toEqual({ services: [], dropped: 1 });
  });

  it('versions the table by content: a store change that leaves it as it was keeps its version', () => {
    let tasks = [task('a', {})];
    let builds = 0;
    const build = () => {
      builds++;
      return buildEndpointTable([service], tasks, () => 'peer');
    };
    const cache = new EndpointTableCache(build);
    const first = cache.current();
    expect(cache.current()).toBe(first);
    expect(builds).toBe(1);
    // A store change that does not touch the table (a status update of an unpublished task, say).
    cache.invalidate();
    expect(cache.current().version).toBe(first.version);
    expect(builds).toBe(2);
    tasks = [task('a', {}), task('bb', {})];
    cache.invalidate();
    const second = cache.current();
    expect(second.version).not.toBe(first.version);
    expect(second.table[0]!.endpoints.map((e) => e.taskId)).toEqual(['a', 'bb']);
    // Another manager (the next leader) never claims the same version for its table.
    expect(new EndpointTableCache(build).current().version).not.toBe(second.version);
  });
});
