import java.io.IOException;
import java.util.Arrays;
import java.util.List;

import org.codelibs.opensearch.runner.OpenSearchRunner;

/**
 * One node of the fleet profile's trace store: an OpenSearch node in this JVM, every listener on
 * 127.0.0.1. Each node of the cluster is its own process, so that losing a node is a real process
 * failure (a SIGKILL, an OOM, a crashed host) and not a clean close inside a shared JVM.
 *
 * <pre>java -cp LIB/*:CLASSES ErnieOpenSearch BASE_DIR CLUSTER NODE HTTP_PORT TRANSPORT_PORT SEEDS MANAGERS [ROLES]</pre>
 *
 * NODE is the node's index (its name is node-NODE); it keeps its data under BASE_DIR (the runner
 * puts it in BASE_DIR/node_1: it numbers the nodes of its JVM from 1, and this JVM has one).
 * SEEDS: the other nodes' transport addresses (host:port, comma-separated), where discovery looks
 * for the cluster. MANAGERS: the names of the cluster-manager-eligible nodes that bootstrap a new
 * cluster (comma-separated, the same list on every node). ROLES: node.roles, comma-separated
 * (default cluster_manager,data; cluster_manager alone makes a tie-breaker that holds no data).
 * SIGTERM closes the node and exits.
 */
public final class ErnieOpenSearch {
    private static final long POLL_MS = 1000;

    private ErnieOpenSearch() {
    }

    private static List<String> list(final String csv) {
        return Arrays.stream(csv.split(",")).map(String::trim).filter(s -> !s.isEmpty()).toList();
    }

    public static void main(final String[] args) throws InterruptedException {
        if (args.length != 7 && args.length != 8) {
            System.err.println("usage: ErnieOpenSearch BASE_DIR CLUSTER NODE HTTP_PORT TRANSPORT_PORT SEEDS MANAGERS [ROLES]");
            System.exit(2);
        }
        final String baseDir = args[0];
        final String cluster = args[1];
        final String name = "node-" + Integer.parseInt(args[2]);
        final int httpPort = Integer.parseInt(args[3]);
        final int transportPort = Integer.parseInt(args[4]);
        final List<String> seeds = list(args[5]);
        final List<String> managers = list(args[6]);
        final List<String> roles = list(args.length == 8 ? args[7] : "cluster_manager,data");

        final OpenSearchRunner runner = new OpenSearchRunner();
        // The runner probes for a free HTTP port below 9300 unless told not to; ours is fixed.
        runner.setMaxHttpPort(-1);
        runner.onBuild((id, settings) -> {
            settings.put("node.name", name);
            settings.putList("node.roles", roles);
            settings.put("network.host", "127.0.0.1");
            settings.put("http.port", String.valueOf(httpPort));
            settings.put("transport.port", String.valueOf(transportPort));
            settings.putList("discovery.seed_hosts", seeds);
            // Only read when the data directory holds no cluster yet: every eligible node must be
            // found before the first election, so two half-started clusters can never form.
            settings.putList("cluster.initial_cluster_manager_nodes", managers);
            // Node.start() would otherwise wait up to 30 s for a cluster manager before it opens its
            // HTTP port; the first node of a new cluster has none until the second one is up.
            settings.put("discovery.initial_state_timeout", "0s");
            // A developer's disk is often past the 85/90% watermarks, which would leave replicas
            // unassigned or indices read-only: this store's limit is the trace TTL, not free space.
            settings.put("cluster.routing.allocation.disk.threshold_enabled", false);
        });
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                runner.close();
            } catch (final IOException e) {
                System.err.println("closing " + name + ": " + e.getMessage());
            }
        }));
        runner.build("-basePath", baseDir, "-clusterName", cluster, "-numOfNode", "1", "-printOnFailure");
        // The node runs on its own threads; this one only keeps the JVM alive until it is closed.
        while (!runner.isClosed()) {
            Thread.sleep(POLL_MS);
        }
    }
}
