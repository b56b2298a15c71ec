// `--publish`: docker's two syntaxes for a published port, read into the shape the spec schema checks.
//   short: PUBLISHED:TARGET[/tcp|/udp]            e.g. 8080:80, 8080:80/tcp, 53:53/udp
//   long:  published=8080,target=80[,protocol=tcp|udp][,mode=ingress|host][,proxy-protocol=v2]
// The schema checks ranges, duplicates and what does not go together; this only refuses what cannot be read (and
// SCTP, which the load balancer does not carry: saying so here beats a generic "must be tcp or udp").
import type { PublishedPort } from '../../daemon/api/services.ts';

/** Each field as typed; numbers stay unchecked beyond "a whole number" (the schema has the range). */
export type PublishInput = Partial<Record<keyof PublishedPort, unknown>>;

export function parsePublish(text: string): PublishInput {
  return text.includes('=') ? parseLong(text) : parseShort(text);
}

function parseShort(text: string): PublishInput {
  const slash = text.indexOf('/');
  const ports = slash === -1 ? text : text.slice(0, slash);
  const protocol = slash === -1 ? 'tcp' : text.slice(slash + 1).toLowerCase();
  const match = /^(\d+):(\d+)$/.exec(ports);
  if (!match) throw new Error('expected PUBLISHED:TARGET[/tcp|/udp], e.g. 8080:80, or published=8080,target=80,...');
  return { published: Number(match[1]), target: Number(match[2]), protocol: checkProtocol(protocol) };
}

function parseLong(text: string): PublishInput {
  const out: PublishInput = {};
  for (const part of text.split(',')) {
    const equals = part.indexOf('=');
    const key = (equals === -1 ? part : part.slice(0, equals)).trim().toLowerCase();
    const value = equals === -1 ? '' : part.slice(equals + 1).trim();
    if (value === '') throw new Error(`${key || 'a field'} needs a value`);
    switch (key) {
      case 'published':
      case 'target':
        if (!/^\d+$/.test(value)) throw new Error(`${key} must be a port number (1-65535)`);
        out[key] = Number(value);
        break;
      case 'protocol':
        out.protocol = checkProtocol(value.toLowerCase());
        break;
      case 'mode':
        if (value !== 'ingress' && value !== 'host')
          throw new Error(`unknown mode "${value}": must be ingress or host`);
        out.mode = value;
        break;
      case 'proxy-protocol':
        if (value !== 'v2' && value !== 'none')
          throw new Error(`unknown proxy-protocol "${value}": must be v2 or none`);
        out.proxyProtocol = value === 'v2';
        break;
      default:
        throw new Error(`unknown key "${key}" (expected published, target, protocol, mode, proxy-protocol)`);
    }
  }
  if (out.published === undefined) throw new Error('published is required');
  // docker: a target of its own is required in the long form; we default it to the published port, which is
  // what a task on the host network sees anyway (it listens on $PORT).
  out.target ??= out.published;
  return out;
}

function checkProtocol(protocol: string): 'tcp' | 'udp' {
  if (protocol === 'sctp') throw new Error('SCTP is not supported by the load balancer: publish tcp or udp ports');
  if (protocol !== 'tcp' && protocol !== 'udp') throw new Error(`unknown protocol "${protocol}": must be tcp or udp`);
  return protocol;
}
