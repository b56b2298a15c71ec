// A real Docker engine runs the test image the way swarmd's docker executor runs tasks by default: a non-root
// user, every capability dropped, no-new-privileges, no network. This proves the engine in CI can do that, and
// pins down what such a container can and cannot do.
import { beforeAll, expect, it } from 'vitest';
import { describeWithDocker, ensureTestImage, probeDocker, runContainer, TEST_IMAGE } from '../helpers/docker.ts';

const probe = await probeDocker();

const unprivileged = {
  Image: TEST_IMAGE,
  User: '65534:65534',
  HostConfig: {
    CapDrop: ['ALL'],
    SecurityOpt: ['no-new-privileges'],
    NetworkMode: 'none',
  },
};

describeWithDocker('docker: unprivileged container', probe, (docker) => {
  beforeAll(async () => {
    await ensureTestImage(docker(), probe.host);
  });

  it('runs as 65534:65534 with no effective capabilities and no_new_privs set', async () => {
    const run = await runContainer(docker(), {
      ...unprivileged,
      Cmd: ['sh', '-c', 'id -u; id -g; grep -E "^(CapEff|NoNewPrivs):" /proc/self/status'],
    });
    expect(run.stderr).toBe('');
    expect(run.exitCode).toBe(0);
    const lines = run.stdout.trim().split('\n');
    expect(lines[0]).toBe('65534');
    expect(lines[1]).toBe('65534');
    const status = Object.fromEntries(
      lines.slice(2).map((line) => {
        const [key, value] = line.split(':');
        return [key?.trim(), value?.trim()];
      }),
    );
    expect(status.CapEff).toMatch(/^0+$/);
    expect(status.NoNewPrivs).toBe('1');
  });

  it('cannot do what needs root: writing to /etc or chown fails', async () => {
    const touch = await runContainer(docker(), { ...unprivileged, Cmd: ['touch', '/etc/x'] });
    expect(touch.exitCode).not.toBe(0);
    expect(touch.stderr).toMatch(/Permission denied|Read-only file system/);

    const chown = await runContainer(docker(), {
      ...unprivileged,
      Cmd: ['sh', '-c', 'touch /tmp/mine && chown 0:0 /tmp/mine'],
    });
    expect(chown.exitCode).not.toBe(0);
    expect(chown.stderr).toMatch(/Operation not permitted/);
  });
});
