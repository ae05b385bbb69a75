package fila.bench.kstreams;

import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.TopicPartitionInfo;
import org.apache.kafka.common.errors.UnknownTopicOrPartitionException;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

/**
 * Creates topics with a given number of partitions (waiting until every
 * partition has a leader), deletes topics, or audits them: reads every
 * committed record from the start to the end and counts the records, the
 * distinct ids (each record's JSON field "id") and the duplicates. Exit
 * code 0 on success.
 */
public final class Topics {
    static final String USAGE = String.join("\n",
        "usage: java -cp 'target/job.jar:target/lib/*' fila.bench.kstreams.Topics create|delete|audit [options]",
        "  --brokers HOST:PORT[,...]   Kafka bootstrap servers [127.0.0.1:9092]",
        "  --topics T1,T2,...          the topics",
        "  --partitions N              partitions of each created topic [1]",
        "  --timeout-s S               audit: give up after S seconds [120]",
        "create fails if a topic exists already; delete ignores missing topics; audit reads",
        "committed records only (isolation.level read_committed) and prints one JSON line:",
        "{\"records\":N,\"ids\":D,\"duplicates\":N-D,\"unreadable\":U}.");

    private Topics() {}

    public static void main(String[] argv) throws Exception {
        if (argv.length == 0 || !List.of("create", "delete", "audit").contains(argv[0])) {
            if (argv.length > 0 && (argv[0].equals("-h") || argv[0].equals("--help"))) {
                System.out.println(USAGE);
                return;
            }
            Args.fail(USAGE, "topics", "the first argument is create, delete or audit");
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
        if (command.equals("audit")) {
            int timeoutS = Args.count(args, "timeout-s", 120, 1, 86_400, USAGE, "topics");
            audit(brokers, topics, timeoutS);
            return;
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

    /** Reads every committed record of the topics and prints the counts. */
    private static void audit(String brokers, List<String> topics, int timeoutS) {
        Properties props = new Properties();
        props.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, brokers);
        props.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
        props.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, false);
        props.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class);
        props.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class);
        ObjectMapper json = new ObjectMapper();
        Map<Long, Integer> seen = new HashMap<>();
        long records = 0;
        long unreadable = 0;
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(timeoutS);
        try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(props)) {
            List<TopicPartition> parts = new ArrayList<>();
            for (String t : topics) {
                for (PartitionInfo p : consumer.partitionsFor(t, Duration.ofSeconds(30))) {
                    parts.add(new TopicPartition(t, p.partition()));
                }
            }
            consumer.assign(parts);
            consumer.seekToBeginning(parts);
            // Read committed, the end is the last stable offset: nothing of
            // a transaction still open is counted.
            Map<TopicPartition, Long> end = consumer.endOffsets(parts, Duration.ofSeconds(30));
            while (true) {
                boolean done = true;
                for (TopicPartition tp : parts) {
                    done &= consumer.position(tp, Duration.ofSeconds(30)) >= end.get(tp);
                }
                if (done) {
                    break;
                }
                if (System.nanoTime() > deadline) {
                    System.err.println("topics: audit did not reach the end within " + timeoutS + " s");
                    System.exit(1);
                }
                for (ConsumerRecord<byte[], byte[]> r : consumer.poll(Duration.ofMillis(200))) {
                    records++;
                    JsonNode id = null;
                    try {
                        id = r.value() == null ? null : json.readTree(r.value()).get("id");
                    } catch (java.io.IOException e) {
                        // counted below
                    }
                    if (id == null || !id.canConvertToLong()) {
                        unreadable++;
                        continue;
                    }
                    seen.merge(id.asLong(), 1, Integer::sum);
                }
            }
        }
        long ids = seen.size();
        System.out.println("{\"records\":" + records + ",\"ids\":" + ids + ",\"duplicates\":"
            + (records - unreadable - ids) + ",\"unreadable\":" + unreadable + "}");
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
