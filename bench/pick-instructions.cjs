// Instruction count per pick, for `valgrind --tool=callgrind` (cache-independent): the same script
// with PICKS and 2*PICKS picks; the difference divided by PICKS is the cost of one pick.
//   N=100000 PICKS=200000 valgrind --tool=callgrind --callgrind-out-file=/dev/null node bench/pick-instructions.cjs
'use strict';
const { ChannelRegistry } = require('../dist/channels/registry');
const { selectChannel } = require('../dist/selection/select');
const n = Number(process.env.N || 10);
const picks = Number(process.env.PICKS || 100000);
const reg = new ChannelRegistry(Array.from({ length: n }, (_, i) => ({ id: i + 1, models: 'm', priority: i % 3, weight: (i % 10) + 1 })));
const tiers = reg.tiers('default', 'm');
let seed = 12345;
const random = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x80000000);
const all = () => true;
let sum = 0;
for (let i = 0; i < picks; i++) sum += selectChannel(tiers, all, random).id;
if (sum === 0) console.log('unreachable');
