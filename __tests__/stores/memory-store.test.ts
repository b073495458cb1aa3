// The Store contract against the embedded MemoryStore (the reference semantics).
import { MemoryStore } from '../../lib/stores/memory';
import { runStoreContract } from './store-contract';

runStoreContract('MemoryStore', async () => {
  const store = new MemoryStore({ prefix: 'ecd-test-memory:' });
  return { store, peer: store, cleanup: () => store.shutdown() };
});
