// The anchor side of the Docker benches: the same engine in swarm mode for the duration of one measurement.
import type Docker from 'dockerode';

/** Runs `measure` with the engine in swarm mode (a one-node swarm on loopback), and leaves swarm mode after. */
export async function inDockerSwarm<T>(docker: Docker, measure: () => Promise<T>): Promise<T | { error: string }> {
  try {
    await docker.swarmInit({ ListenAddr: '127.0.0.1:2377', AdvertiseAddr: '127.0.0.1' });
  } catch (error) {
    return { error: `docker swarm init failed: ${(error as Error).message}` };
  }
  try {
    return await measure();
  } finally {
    await docker.swarmLeave({ force: true }).catch(() => {});
  }
}
