// Images: the local one when present, else a pull with a time limit.
//
// Compute nodes often have no registry access and get their images loaded by hand (docker load) or from a local
// mirror, so a present image is used as it is, tag and all: nothing is pulled to check for a newer one. To roll
// out a new version, use a new tag or a digest.
import { ExecutorError } from '../types.ts';
import { call, DockerError, type Engine, engineMessage, hasStatus, toDockerError } from './engine.ts';

/** The registry's way of saying the image does not exist (or we may not see it): pulling again won't help. */
const NOT_FOUND = /not found|manifest unknown|does not exist|pull access denied|invalid reference format|unauthorized/i;

/** Makes sure `image` is on the engine. Pulls at most once at a time per image (replicas of a service share it). */
export class ImageStore {
  private readonly engine: Engine;
  private readonly pullTimeoutMs: number;
  private readonly pulls = new Map<string, Promise<void>>();

  constructor(engine: Engine, pullTimeoutMs: number) {
    this.engine = engine;
    this.pullTimeoutMs = pullTimeoutMs;
  }

  async ensure(image: string): Promise<void> {
    if (await this.present(image)) return;
    let pull = this.pulls.get(image);
    if (!pull) {
      pull = this.pull(image).finally(() => this.pulls.delete(image));
      this.pulls.set(image, pull);
    }
    await pull;
  }

  async present(image: string): Promise<boolean> {
    try {
      await call(this.engine, `inspecting image ${image}`, () => this.engine.docker.getImage(image).inspect());
      return true;
    } catch (error) {
      if (hasStatus(error, 404)) return false;
      throw error;
    }
  }

  private async pull(image: string): Promise<void> {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), this.pullTimeoutMs);
    try {
      // Aborting the request makes dockerd cancel the pull (it is bound to the request).
      const stream = (await this.engine.docker.pull(image, {
        abortSignal: controller.signal,
      })) as AsyncIterable<Buffer>;
      const failure = await pullFailure(stream);
      if (failure) throw pullError(image, failure, undefined);
    } catch (error) {
      if (controller.signal.aborted) {
        throw new ExecutorError(
          `image ${image} is not on this node and pulling it did not finish within ${this.pullTimeoutMs} ms ` +
            '(registry unreachable or slow?)',
          true,
        );
      }
      if (error instanceof ExecutorError) throw error;
      const status = (error as { statusCode?: unknown }).statusCode;
      if (typeof status === 'number') throw pullError(image, engineMessage(error), status);
      // Not an answer from the engine: the engine itself is the problem; say so.
      throw toDockerError(error, `pulling image ${image}`, this.engine.address);
    } finally {
      clearTimeout(timer);
    }
    if (!(await this.present(image))) {
      throw new ExecutorError(`image ${image}: the pull finished but the engine does not have the image`, true);
    }
  }
}

/** The error reported in a pull's progress stream ({"error": ...} lines), if any. */
async function pullFailure(stream: AsyncIterable<Buffer>): Promise<string | undefined> {
  let text = '';
  let failure: string | undefined;
  const take = (line: string) => {
    if (!line.trim()) return;
    try {
      const event = JSON.parse(line) as { error?: unknown; errorDetail?: { message?: unknown } };
      const message = event.errorDetail?.message ?? event.error;
      if (typeof message === 'string' && message) failure = message;
    } catch {
      // Not JSON: a proxy in between, or a truncated line; the outcome is checked by inspecting the image after.
    }
  };
  for await (const chunk of stream) {
    text += chunk.toString('utf8');
    let newline = text.indexOf('\n');
    while (newline !== -1) {
      take(text.slice(0, newline));
      text = text.slice(newline + 1);
      newline = text.indexOf('\n');
    }
  }
  take(text);
  return failure;
}

function pullError(image: string, message: string, status: number | undefined): ExecutorError {
  const notFound = status === 404 || NOT_FOUND.test(message);
  return new DockerError(
    notFound
      ? `image ${image} is not on this node and the registry does not have it: ${message}`
      : `image ${image} is not on this node and pulling it failed: ${message}`,
    !notFound,
    status,
  );
}
