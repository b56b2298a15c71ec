import { defineConfig } from 'vitest/config';

// Three tiers a person can run on their own (npm run test:unit | test:integration | test:simulation);
// `npm test` runs all of them.
export default defineConfig({
  test: {
    projects: [
      {
        test: {
          name: 'unit',
          include: ['test/unit/**/*.test.ts'],
          testTimeout: 20_000,
        },
      },
      {
        test: {
          name: 'integration',
          include: ['test/integration/**/*.test.ts'],
          // Real processes, a real dockerd and network namespaces: slow, and they share ports and the
          // engine, so files run one at a time on the 2-core machines this project targets.
          fileParallelism: false,
          testTimeout: 120_000,
          hookTimeout: 120_000,
        },
      },
      {
        test: {
          name: 'simulation',
          include: ['test/simulation/**/*.test.ts'],
          testTimeout: 600_000,
        },
      },
    ],
  },
});
