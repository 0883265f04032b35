/** How the long-running commands report what the kernel could not give them. */
import type { Logger } from '../core/logger.ts';
import { describeOff, type FeatureOff } from '../kernel/programs.ts';

/** An optional feature switched off on this kernel: a warning that names what is lost. */
export function warnFeatureOff(log: Logger): (off: FeatureOff) => void {
  return (off) => log.warn({ feature: off.feature, programs: off.programs, lost: off.lost }, describeOff(off));
}
