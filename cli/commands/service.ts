// `swarm service ...`: create, list, inspect, scale and remove services, and see their tasks and logs.
import type { Service, Task } from '../../daemon/api/services.ts';
import type { SwarmNode } from '../../daemon/api/types.ts';
import {
  booleanFlag,
  type Command,
  type CommandGroup,
  type Context,
  forEachRef,
  stringFlag,
  UsageError,
} from '../command.ts';
import { capitalize, humanDuration, renderTable, shortId, writeJson } from '../output.ts';
import { CREATE_FLAGS, specFromFlags } from './service-flags.ts';
import { replicasColumn, waitForConvergence } from './service-progress.ts';
import { promote, rollback, update } from './service-update.ts';

const detachFlag = CREATE_FLAGS.detach!;

const create: Command = {
  name: 'create',
  summary: 'Create a new service',
  usage: '[OPTIONS] IMAGE [COMMAND] [ARG...]   (with --runtime process: [OPTIONS] PROGRAM [ARG...])',
  flags: CREATE_FLAGS,
  args: { min: 0 },
  flagsBeforeArgs: true,
  async run(context, flags, args) {
    // Checked in full before the first request, with the server's own schema: a typo sends nothing.
    const spec = specFromFlags(flags, args, context.io.env);
    const service = await context.client.createService(spec);
    context.io.stdout.write(`${service.id}\n`);
    if (booleanFlag(flags, 'detach')) return 0;
    return converge(context, service.id);
  },
};

/** Waits for the service to converge, progress on stderr (stdout stays the ID, for scripts). */
async function converge(context: Context, serviceId: string, ignoreTaskIds?: ReadonlySet<string>): Promise<number> {
  const result = await waitForConvergence(context.client, serviceId, {
    out: context.io.stderr,
    ...(ignoreTaskIds ? { ignoreTaskIds } : {}),
  });
  if (result.converged) return 0;
  context.io.stderr.write(`swarm: ${result.reason}\n`);
  return 1;
}

const ls: Command = {
  name: 'ls',
  aliases: ['list'],
  summary: 'List services',
  usage: '[OPTIONS]',
  flags: { quiet: { type: 'boolean', short: 'q', description: 'Only display IDs' } },
  args: { min: 0, max: 0 },
  async run({ io, format, client }, flags) {
    const services = [...(await client.listServices())].sort((a, b) => a.spec.name.localeCompare(b.spec.name));
    if (booleanFlag(flags, 'quiet')) io.stdout.write(services.map((service) => `${service.id}\n`).join(''));
    else if (format === 'json') writeJson(io.stdout, services);
    else io.stdout.write(renderServiceTable(services, await client.listTasks()));
    return 0;
  },
};

export function renderServiceTable(services: readonly Service[], tasks: readonly Task[]): string {
  return renderTable(
    ['ID', 'NAME', 'MODE', 'REPLICAS', 'IMAGE', 'PORTS'],
    services.map((service) => [
      shortId(service.id),
      service.spec.name,
      service.spec.mode.kind.replace('-', ' '),
      replicasColumn(
        service,
        tasks.filter((task) => task.serviceId === service.id),
      ),
      whatRuns(service),
      portsColumn(service),
    ]),
  );
}

/** Docker's form: "*:8080->80/tcp" for a port every node serves, "8080->80/udp (host)" for a host-mode one. */
function portsColumn(service: Service): string {
  return (service.spec.endpoint?.ports ?? [])
    .map(
      (p) =>
        `${p.mode === 'host' ? '' : '*:'}${p.published}->${p.target}/${p.protocol}${p.mode === 'host' ? ' (host)' : ''}`,
    )
    .join(', ');
}

/** The image; for the process runtime, which has none, the command line (shortened). */
function whatRuns(service: Service): string {
  const { task } = service.spec;
  if (task.runtime !== 'process') return task.image;
  const line = [...task.command, ...task.args].join(' ');
  return line.length > 40 ? `${line.slice(0, 39)}…` : line;
}

const ps: Command = {
  name: 'ps',
  summary: 'List the tasks of one or more services',
  usage: '[OPTIONS] SERVICE [SERVICE...]',
  flags: {
    quiet: { type: 'boolean', short: 'q', description: 'Only display task IDs' },
    'no-trunc': { type: 'boolean', description: 'Do not truncate IDs' },
  },
  args: { min: 1 },
  async run(context, flags, refs) {
    const tasks: Task[] = [];
    let found = 0;
    const failed = await forEachRef(context, refs, async (ref) => {
      tasks.push(...(await context.client.listTasks({ service: ref })));
      found += 1;
    });
    const { io, format, client } = context;
    if (booleanFlag(flags, 'quiet')) io.stdout.write(tasks.map((task) => `${task.id}\n`).join(''));
    else if (format === 'json') writeJson(io.stdout, tasks);
    else if (found > 0) {
      const nodes = await client.listNodes();
      io.stdout.write(renderTaskTable(tasks, nodes, { noTrunc: booleanFlag(flags, 'no-trunc'), now: Date.now() }));
    }
    return failed ? 1 : 0;
  },
};

/**
 * docker's `service ps` table: one group per slot (per node for global services), newest task first and the
 * ones it replaced under it marked `\_`.
 */
export function renderTaskTable(
  tasks: readonly Task[],
  nodes: readonly SwarmNode[],
  options: { noTrunc: boolean; now: number },
): string {
  const hostnames = new Map(nodes.map((node) => [node.id, node.description.hostname]));
  const id = (value: string) => (options.noTrunc ? value : shortId(value));
  const group = (task: Task) => `${task.serviceName}\0${task.slot === 0 ? (task.nodeId ?? '') : task.slot}`;
  const sorted = [...tasks].sort(
    (a, b) =>
      a.serviceName.localeCompare(b.serviceName) ||
      a.slot - b.slot ||
      (hostnames.get(a.nodeId ?? '') ?? a.nodeId ?? '').localeCompare(
        hostnames.get(b.nodeId ?? '') ?? b.nodeId ?? '',
      ) ||
      b.createdAt.localeCompare(a.createdAt),
  );
  const rows = sorted.map((task, index) => {
    const name = `${task.serviceName}.${task.slot === 0 ? id(task.nodeId ?? '') : task.slot}`;
    const replaced = index > 0 && group(sorted[index - 1]!) === group(task);
    const since = Date.parse(task.status.since);
    const age = Number.isNaN(since) ? '' : ` ${humanDuration(Math.max(0, options.now - since))} ago`;
    return [
      id(task.id),
      replaced ? ` \\_ ${name}` : name,
      task.nodeId ? (hostnames.get(task.nodeId) ?? id(task.nodeId)) : '',
      capitalize(task.desiredState),
      `${capitalize(task.status.state)}${task.status.health ? ` (${task.status.health})` : ''}${age}`,
      task.status.error ?? (task.status.state === 'pending' ? (task.status.pendingReason ?? '') : ''),
    ];
  });
  // Which accelerators each task holds, when any does (docker's table has no such column).
  if (sorted.some((task) => task.devices.length > 0)) {
    const devices = sorted.map((task) => task.devices.map((d) => `${d.kind}:${d.ids.join(',')}`).join(' '));
    return renderTable(
      ['ID', 'NAME', 'NODE', 'DESIRED STATE', 'CURRENT STATE', 'DEVICES', 'ERROR'],
      rows.map((row, i) => [...row.slice(0, 5), devices[i]!, row[5]!]),
    );
  }
  return renderTable(['ID', 'NAME', 'NODE', 'DESIRED STATE', 'CURRENT STATE', 'ERROR'], rows);
}

const inspect: Command = {
  name: 'inspect',
  summary: 'Display detailed information on one or more services (JSON)',
  usage: 'SERVICE [SERVICE...]',
  args: { min: 1 },
  async run(context, _flags, refs) {
    const found: Service[] = [];
    const failed = await forEachRef(context, refs, async (ref) => {
      found.push(await context.client.getService(ref));
    });
    writeJson(context.io.stdout, found);
    return failed ? 1 : 0;
  },
};

const scale: Command = {
  name: 'scale',
  summary: 'Scale one or more replicated services',
  usage: '[OPTIONS] SERVICE=REPLICAS [SERVICE=REPLICAS...]',
  flags: { detach: detachFlag },
  args: { min: 1 },
  async run(context, flags, args) {
    // All checked before the first change, so a typo in the last one changes nothing.
    const targets = args.map((arg) => {
      const match = /^(.+)=(\d+)$/.exec(arg);
      if (!match) throw new UsageError(`invalid scale specifier "${arg}": expected SERVICE=REPLICAS`);
      return { ref: match[1]!, replicas: Number(match[2]) };
    });
    const scaled: { id: string; before: Set<string> }[] = [];
    let refused = false;
    let next = 0; // forEachRef runs them in order: the n-th call is the n-th target
    const failed = await forEachRef(
      context,
      targets.map((target) => target.ref),
      async (ref) => {
        const { replicas } = targets[next++]!;
        const service = await context.client.getService(ref);
        const mode = service.spec.mode;
        if (mode.kind !== 'replicated' && mode.kind !== 'replicated-job') {
          context.io.stderr.write(`swarm: ${ref}: scale can only be used with replicated or replicated-job mode\n`);
          refused = true;
          return;
        }
        const before = new Set((await context.client.listTasks({ service: service.id })).map((task) => task.id));
        // docker: scaling a job sets how many completions it runs.
        const newMode = mode.kind === 'replicated' ? { ...mode, replicas } : { ...mode, totalCompletions: replicas };
        await context.client.updateService(service.id, {
          version: service.version,
          spec: { ...service.spec, mode: newMode },
        });
        context.io.stdout.write(`${ref} scaled to ${replicas}\n`);
        scaled.push({ id: service.id, before });
      },
    );
    let status = failed || refused ? 1 : 0;
    if (booleanFlag(flags, 'detach')) return status;
    for (const { id, before } of scaled) {
      if ((await converge(context, id, before)) !== 0) status = 1;
    }
    return status;
  },
};

const rm: Command = {
  name: 'rm',
  aliases: ['remove'],
  summary: 'Remove one or more services',
  usage: 'SERVICE [SERVICE...]',
  args: { min: 1 },
  async run(context, _flags, refs) {
    const failed = await forEachRef(context, refs, async (ref) => {
      await context.client.removeService(ref);
      context.io.stdout.write(`${ref}\n`);
    });
    return failed ? 1 : 0;
  },
};

const logs: Command = {
  name: 'logs',
  summary: 'Fetch the logs of a service',
  usage: '[OPTIONS] SERVICE',
  flags: {
    follow: { type: 'boolean', short: 'f', description: 'Follow log output' },
    tail: {
      type: 'string',
      short: 'n',
      valueName: 'N',
      description: 'Number of lines to show from the end of each task (default: all)',
    },
    timestamps: { type: 'boolean', short: 't', description: 'Show timestamps' },
  },
  args: { min: 1, max: 1 },
  async run({ io, client }, flags, [ref]) {
    const tailText = stringFlag(flags, 'tail');
    if (tailText !== undefined && tailText !== 'all' && !/^\d+$/.test(tailText)) {
      throw new UsageError(`invalid --tail "${tailText}": must be a number of lines or "all"`);
    }
    const service = await client.getService(ref!);
    const hostnames = new Map((await client.listNodes()).map((node) => [node.id, node.description.hostname]));
    const timestamps = booleanFlag(flags, 'timestamps');
    const lines = client.serviceLogs(service.id, {
      follow: booleanFlag(flags, 'follow'),
      ...(tailText !== undefined && tailText !== 'all' ? { tail: Number(tailText) } : {}),
    });
    for await (const entry of lines) {
      // docker's prefix: service.slot.task@node
      const slot = entry.slot === 0 ? shortId(entry.nodeId) : entry.slot;
      const where = `${service.spec.name}.${slot}.${shortId(entry.taskId)}@${hostnames.get(entry.nodeId) ?? shortId(entry.nodeId)}`;
      const text = `${timestamps ? `${entry.time} ` : ''}${where}    | ${entry.line}\n`;
      (entry.stream === 'stderr' ? io.stderr : io.stdout).write(text);
    }
    return 0;
  },
};

export const serviceGroup: CommandGroup = {
  name: 'service',
  summary: 'Manage services',
  commands: [create, inspect, logs, ls, promote, ps, rm, rollback, scale, update],
};
