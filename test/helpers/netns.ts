// A second host for multi-host tests: a network namespace joined to this one by a veth pair, each end with an
// address of its own in 10.231.N.0/24 (N picked per run). Traffic stays on that link: both addresses are this
// machine's, one of them inside a namespace this test made. Needs root and iproute2.
import { spawnSync } from 'node:child_process';

function run(command: string[], what: string): string {
  const result = spawnSync(command[0]!, command.slice(1), { encoding: 'utf8', timeout: 10_000 });
  if (result.error !== undefined || result.status !== 0)
    throw new Error(`${what}: ${command.join(' ')} failed: ${result.error?.message ?? result.stderr.trim()}`);
  return result.stdout;
}

export class NamespaceHost {
  /** The namespace's name, for `ip netns exec`. */
  readonly netns: string;
  /** This namespace's end of the link (where tests reach the other host from). */
  readonly localIp: string;
  /** The other host's address. */
  readonly ip: string;
  private readonly localIf: string;

  private constructor(tag: string, subnet: number) {
    this.netns = `swd-${tag}`;
    this.localIf = `swd${tag}a`;
    this.localIp = `10.231.${subnet}.1`;
    this.ip = `10.231.${subnet}.2`;
  }

  /** Creates the namespace and the link; throws, naming what is missing, where it cannot (not root, no `ip`). */
  static create(): NamespaceHost {
    if (process.getuid?.() !== 0) throw new Error('network namespaces need root; run this suite as root');
    const subnet = 1 + Math.floor(Math.random() * 250);
    const host = new NamespaceHost(`${process.pid % 10000}${subnet}`.slice(0, 9), subnet);
    const peerIf = `${host.localIf.slice(0, -1)}b`;
    const steps: [string[], string][] = [
      [['ip', 'netns', 'add', host.netns], 'create the namespace'],
      [['ip', 'link', 'add', host.localIf, 'type', 'veth', 'peer', 'name', peerIf], 'create the veth pair'],
      [['ip', 'link', 'set', peerIf, 'netns', host.netns], 'move one end into the namespace'],
      [['ip', 'addr', 'add', `${host.localIp}/24`, 'dev', host.localIf], 'address this end'],
      [['ip', 'link', 'set', host.localIf, 'up'], 'bring this end up'],
      [['ip', 'netns', 'exec', host.netns, 'ip', 'addr', 'add', `${host.ip}/24`, 'dev', peerIf], 'address the far end'],
      [['ip', 'netns', 'exec', host.netns, 'ip', 'link', 'set', peerIf, 'up'], 'bring the far end up'],
      [['ip', 'netns', 'exec', host.netns, 'ip', 'link', 'set', 'lo', 'up'], "bring the namespace's loopback up"],
    ];
    try {
      for (const [command, what] of steps) run(command, what);
    } catch (err) {
      host.destroy();
      throw err;
    }
    return host;
  }

  /** Runs a command inside the namespace (iptables, say); throws with its stderr when it fails. */
  exec(command: string[], what: string): string {
    return run(['ip', 'netns', 'exec', this.netns, ...command], what);
  }

  /** Removes the namespace, which takes both ends of the veth pair with it. */
  destroy(): void {
    spawnSync('ip', ['netns', 'del', this.netns]);
    spawnSync('ip', ['link', 'del', this.localIf]);
  }
}
