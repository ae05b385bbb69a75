package fila.bench.kstreams;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.common.TopicPartitionInfo;
import org.apache.kafka.common.errors.UnknownTopicOrPartitionException;

/**
 * Creates topics with a given number of partitions (waiting until every
 * partition has a leader), or deletes topics. Exit code 0 on success.
 */
public final class Topics {
    static final String USAGE = String.join("\n",
        "usage: java -cp 'target/job.jar:target/lib/*' fila.bench.kstreams.Topics create|delete [options]",
        "  --brokers HOST:PORT[,...]   Kafka bootstrap servers [127.0.0.1:9092]",
        "  --topics T1,T2,...          the topics",
        "  --partitions N              partitions of each created topic [1]",
        "create fails if a topic exists already; delete ignores missing topics.");

    private Topics() {}

    public static void main(String[] argv) throws Exception {
        if (argv.length == 0 || !(argv[0].equals("create") || argv[0].equals("delete"))) {
            if (argv.length > 0 && (argv[0].equals("-h") || argv[0].equals("--help"))) {
                System.out.println(USAGE);
                return;
            }
            Args.fail(USAGE, "topics", "the first argument is create or delete");
        }
        String command = argv[0];
        Map<String, String> args = Args.parse(Arrays.copyOfRange(argv, 1, argv.length), USAGE, "topics");
        String brokers = args.getOrDefault("brokers", "127.0.0.1:9092");
        int partitions = Args.count(args, "partitions", 1, USAGE, "topics");
        List<String> topics = new ArrayList<>();
        for (String t : args.getOrDefault("topics", "").split(",")) {
            if (!t.isBlank()) {
                topics.add(t.trim());
            }
        }
        if (topics.isEmpty()) {
            Args.fail(USAGE, "topics", "--topics names no topic");
        }

        Properties props = new Properties();
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, brokers);
        props.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, 15000);
        props.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, 30000);
        try (Admin admin = Admin.create(props)) {
            if (command.equals("create")) {
                List<NewTopic> fresh = new ArrayList<>();
                for (String t : topics) {
                    fresh.add(new NewTopic(t, partitions, (short) 1));
                }
                admin.createTopics(fresh).all().get(30, TimeUnit.SECONDS);
                waitForLeaders(admin, topics, partitions);
                System.out.println("topics: created " + String.join(",", topics)
                    + " with " + partitions + " partition(s)");
            } else {
                try {
                    admin.deleteTopics(topics).all().get(30, TimeUnit.SECONDS);
                } catch (ExecutionException e) {
                    if (!(e.getCause() instanceof UnknownTopicOrPartitionException)) {
                        throw e;
                    }
                }
                System.out.println("topics: deleted " + String.join(",", topics));
            }
        } catch (ExecutionException e) {
            System.err.println("topics: " + command + " failed: " + e.getCause());
            System.exit(1);
        }
    }

    private static void waitForLeaders(Admin admin, List<String> topics, int partitions)
            throws Exception {
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(30);
        while (true) {
            boolean ready = true;
            try {
                Map<String, TopicDescription> all =
                    admin.describeTopics(topics).allTopicNames().get(10, TimeUnit.SECONDS);
                for (TopicDescription d : all.values()) {
                    ready &= d.partitions().size() == partitions;
                    for (TopicPartitionInfo p : d.partitions()) {
                        ready &= p.leader() != null && !p.leader().isEmpty();
                    }
                }
            } catch (ExecutionException e) {
                ready = false;
            }
            if (ready) {
                return;
            }
            if (System.nanoTime() > deadline) {
                throw new IllegalStateException("the topics have no leaders after 30 s");
            }
            Thread.sleep(100);
        }
    }
}
